#!/usr/bin/env python3
"""Chat templates of the families rendered by transformers, for crates/core/tests/templates.rs.

    scripts/fetch-templates.sh
    /work/venv/bin/python scripts/reference/make_template_fixtures.py

For each model's own template (Qwen3 with its thinking blocks and tools, Gemma 2, Gemma 3, Phi-3.5; fetched into
models/templates/ by scripts/fetch-templates.sh, never committed) and a set of conversations written
here, transformers' `render_jinja_template` (what `apply_chat_template(tokenize=False)` calls) gives
the text, or the exception a template raises. Output: crates/core/tests/fixtures/templates/expected.json.
"""

import json
from pathlib import Path

import transformers
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "models" / "templates"
OUT = ROOT / "crates" / "core" / "tests" / "fixtures" / "templates" / "expected.json"

U1 = {"role": "user", "content": "How do I boil an egg?"}
A1 = {"role": "assistant", "content": "Put it in boiling water for nine minutes."}
U2 = {"role": "user", "content": "  And a soft one?\n"}
SYS = {"role": "system", "content": "You are a concise cook."}
THOUGHT = {"role": "assistant",
           "content": "<think>\nThe user wants timing.\n</think>\n\nNine minutes for hard, six for soft."}
TOOL = {"type": "function", "function": {"name": "timer", "description": "Start a kitchen timer",
        "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}}, "required": ["minutes"]}}}

TEMPLATES = {
    "qwen3": ("Qwen-Qwen3-0.6B.jinja", "", "<|im_end|>", [
        ([U1], True, {}),
        ([U1, A1], False, {}),
        ([SYS, U1, THOUGHT, U2], True, {}),
        ([SYS, U1, THOUGHT, U2], True, {"enable_thinking": False}),
        ([U1, THOUGHT], False, {}),
        ([SYS, U1], True, {"tools": [TOOL]}),
    ]),
    "gemma2": ("google-gemma-2-2b-it.jinja", "<bos>", "<eos>", [
        ([U1], True, {}),
        ([U1, A1, U2], True, {}),
        ([U1, A1], False, {}),
        ([SYS, U1], True, {}),
        ([U1, U2], True, {}),
    ]),
    # Gemma 3 folds a system message into the first user turn (Gemma 2 raises on one).
    "gemma3": ("google-gemma-3-it.jinja", "<bos>", "<eos>", [
        ([U1], True, {}),
        ([SYS, U1, A1, U2], True, {}),
        ([SYS, U1], False, {}),
        ([U1, A1], False, {}),
        ([U1, U2], True, {}),
        ([SYS, A1], True, {}),
    ]),
    "phi3": ("microsoft-Phi-3.5-mini-instruct.jinja", "<s>", "<|endoftext|>", [
        ([SYS, U1], True, {}),
        ([U1, A1], False, {}),
        ([{"role": "system", "content": ""}, U1, A1, U2], True, {}),
    ]),
}


def main():
    out = {"generator": "scripts/reference/make_template_fixtures.py",
           "transformers": transformers.__version__, "templates": {}}
    for family, (file, bos, eos, cases) in TEMPLATES.items():
        source = (SRC / file).read_text()
        rows = []
        for messages, gen, extra in cases:
            row = {"messages": messages, "add_generation_prompt": gen, "extra": extra}
            try:
                text, _ = render_jinja_template(
                    conversations=[messages], chat_template=source, add_generation_prompt=gen,
                    bos_token=bos, eos_token=eos, **extra)
                row["rendered"] = text[0]
            except Exception as e:  # a template's raise_exception
                row["error"] = str(e)
            rows.append(row)
        out["templates"][family] = {"file": file, "bos_token": bos, "eos_token": eos, "cases": rows}
        print(family, [("error: " + r["error"]) if "error" in r else len(r["rendered"]) for r in rows])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
