"""Where answers end: for each `burnish eval` output directory, how many answers of one set ended by
themselves (end of turn before the token limit), how many of those end without closing punctuation
(mid-sentence, or a list's last item), their lengths, and how many ended near a given length (a
training cut, e.g. `data.generate.max_new_tokens`).

A model fine-tuned on generated answers that were cut at N tokens but labelled with an end-of-turn
token learns to stop after about N tokens, often mid-sentence; evaluate it with a limit well above N
to see it (docs/results.md, "Cut answers").

    python3 scripts/bench/answer_endings.py --limit 128 --cut 48 \
        original=runs/endings/original safety=runs/endings/safety
"""
import argparse, json, os, statistics, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# A reply that ends with one of these (after trailing quotes, brackets and emphasis) is punctuated.
SENTENCE_END = (".", "!", "?", ":", "```")


def ends_sentence(text):
    t = text.rstrip().rstrip("\"')]*_`").rstrip()
    return text.rstrip().endswith("```") or t.endswith(SENTENCE_END)


def endings(rows, limit, cut, near):
    ended = [r for r in rows if r["new_tokens"] < limit]
    lengths = [r["new_tokens"] for r in ended]
    return {
        "answers": len(rows),
        "ended": len(ended),
        "ended_unpunctuated": sum(not ends_sentence(r["response"]) for r in ended),
        f"ended_within_{near}_of_{cut}": sum(abs(n - cut) <= near for n in lengths),
        "median_length_ended": statistics.median(lengths) if lengths else None,
        "median_length_all": statistics.median(r["new_tokens"] for r in rows) if rows else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="LABEL=DIR, a burnish eval --out directory")
    ap.add_argument("--set", default="harmless_val", help="the set name in completions.jsonl (its file stem)")
    ap.add_argument("--limit", type=int, required=True, help="the eval's --max-new-tokens")
    ap.add_argument("--cut", type=int, default=48, help="the training cut to look for")
    ap.add_argument("--near", type=int, default=8, help="tokens either side of --cut")
    ap.add_argument("--out", help="also write the results to OUT/result.json")
    a = ap.parse_args()
    results = {}
    for spec in a.runs:
        label, _, path = spec.partition("=")
        if not path:
            sys.exit(f"{spec}: expected LABEL=DIR")
        with open(os.path.join(path, "completions.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        rows = [r for r in rows if r["set"] == a.set]
        if not rows:
            sys.exit(f"{path}/completions.jsonl: no answers of the set {a.set!r}")
        results[label] = endings(rows, a.limit, a.cut, a.near)
    keys = list(next(iter(results.values())))
    print("| model | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for label, r in results.items():
        print(f"| {label} | " + " | ".join(str(r[k]) for k in keys) + " |")
    if a.out:
        from common import write_result
        write_result(a.out, {"set": a.set, "limit": a.limit, "cut": a.cut, "near": a.near, "runs": results})


if __name__ == "__main__":
    main()
