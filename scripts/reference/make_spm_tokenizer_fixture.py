#!/usr/bin/env python3
"""A tiny SentencePiece-style (tokenizer.ggml.model = "llama") GGUF tokenizer, no merges in the file,
and transformers' ids for a few strings: the fixture for burnish's SPM path (merges recovered from scores).

    /work/venv/bin/python scripts/reference/make_spm_tokenizer_fixture.py
"""
import gguf, numpy as np, json
from transformers import AutoTokenizer
import os, sys
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "crates", "core", "tests", "fixtures", "spm")
os.makedirs(OUT, exist_ok=True)
w = gguf.GGUFWriter(os.path.join(OUT, "spm.gguf"), "llama")
tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
types = [2, 3, 3] + [6] * 256
scores = [0.0, 0.0, 0.0] + [0.0] * 256
pieces = ["▁", "t", "h", "e", "a", "c", "s", "o", "n", "i", "r", "d", "g",
          "th", "he", "▁t", "▁th", "▁the", "at", "▁c", "▁ca", "▁cat", "on", "▁on", "in", "▁in", "er", "re", "ing", "▁s", "▁sat", "sa"]
for i, p in enumerate(pieces):
    tokens.append(p); types.append(1); scores.append(-float(i))
w.add_tokenizer_model("llama")
w.add_token_list(tokens)
w.add_token_types(types)
w.add_token_scores(scores)
w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)
w.add_add_bos_token(True)
w.add_tensor("token_embd.weight", np.zeros((len(tokens), 4), dtype=np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
tok = AutoTokenizer.from_pretrained(OUT, gguf_file="spm.gguf")
out = []
for s in ["the cat sat on the mat", "  the  cat", "théâtre 日本", "in the ring", "", "thecat"]:
    out.append({"text": s, "ids": tok.encode(s, add_special_tokens=False), "ids_special": tok.encode(s), "decoded": tok.decode(tok.encode(s, add_special_tokens=False))})
json.dump(out, open(os.path.join(OUT, "expected.json"), "w"), indent=1, ensure_ascii=False)
print(json.dumps(out, ensure_ascii=False)[:800])
