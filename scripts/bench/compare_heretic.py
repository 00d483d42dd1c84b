#!/usr/bin/env python3
"""burnish's refusal-direction ablation beside heretic's, on the same model, prompts and trial budget.

Both make a refusal-free copy of one (safety-tuned) model:
- burnish: `burnish train examples/configs/uncensor-ablate.toml` (directions from the first N harmful /
  harmless training prompts, a search of T trials validated on V AdvBench / Alpaca-seed prompts), or
  with `--config examples/configs/uncensor-subtract.toml` its gated subtraction on the same terms;
- heretic (PyPI `heretic-llm`, AGPL-3.0: run as a program here, never copied): the same prompts as its
  good/bad prompts and evaluation prompts, the same T trials (its Optuna TPE after the same number of
  startup trials), everything else at heretic's defaults. Its interactive menu is driven through its
  notebook mode (stdin): the trial is chosen by burnish's rule — the fewest refusals among trials with
  KL <= --kl-target, else the lowest KL — and saved merged.
Then `burnish eval` measures both the same way on held-out sets neither search saw: refusals on
harmful_val (39), false refusals on harmless_val (first 50), first-token KL to the model they were made
from (`--source`). Writes OUT/compare.json and prints a Markdown table.

    python3 scripts/bench/compare_heretic.py --model runs/refusals/merged --out runs/compare-heretic \
        --heretic /path/to/venv/bin/heretic [--trials 40] [--config examples/configs/uncensor-subtract.toml]

`--heretic none` runs and measures burnish alone (e.g. a second burnish method beside a heretic result
measured earlier on the same model; compare.json then has no heretic entry).

heretic needs torch and transformers (pip install heretic-llm==1.4.0); it runs on the CPU here.
An interrupted comparison resumes: the same command again continues heretic's study from its checkpoint
in OUT/heretic-work/checkpoints (its wall time then counts only the resumed part), and
--reuse-burnish skips burnish's search.
"""

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def prompts(path, n):
    """The first n prompts of a refusal_direction split, AdvBench's csv or the Alpaca seed tasks, one line each."""
    path = Path(path)
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = [r["goal"] for r in csv.DictReader(f)]
    elif path.suffix == ".jsonl":
        rows = [json.loads(line)["instruction"] for line in open(path) if line.strip()]
    else:
        rows = [r["instruction"] for r in json.load(open(path))]
    return [" ".join(r.split()) for r in rows[:n]]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def run_burnish(a, out):
    """burnish's ablation search, validated on the same held-apart prompts heretic evaluates on."""
    sets = [
        f"eval.sets.0.path={json.dumps(str(SHARED / 'advbench/harmful_behaviors.csv'))}",
        f"eval.sets.1.path={json.dumps(str(SHARED / 'alpaca/seed_tasks.jsonl'))}",
    ]
    args = [
        a.burnish, "train", str(Path(a.config).resolve()), "--overwrite",
        "--set", f"model.path={json.dumps(str(Path(a.model).resolve()))}",
        "--set", f"output.dir={json.dumps(str(out))}",
        "--set", f"method.trials={a.trials}",
        "--set", f"method.startup_trials={a.startup}",
        "--set", f"method.val_prompts={a.val}",
        "--set", f"method.kl_target={a.kl_target}",
        "--set", f"data.sources.0.limit={a.prompts}",
        "--set", f"data.sources.1.limit={a.prompts}",
        "--set", "method.eval_before=false",
        "--set", f"eval.limit={a.val}",
    ]
    for s in sets:
        args += ["--set", s]
    t = time.time()
    subprocess.run(args, check=True, stdout=open(out.parent / "burnish.log", "w"), stderr=subprocess.STDOUT)
    return time.time() - t


def heretic_config(a, work):
    """heretic's config.toml: our prompts as its four prompt files, our trial budget, the rest its defaults."""
    files = {
        "good_prompts": write_lines(work / "good.txt", prompts(SHARED / "refusal_direction/splits/harmless_train.json", a.prompts)),
        "bad_prompts": write_lines(work / "bad.txt", prompts(SHARED / "refusal_direction/splits/harmful_train.json", a.prompts)),
        "good_evaluation_prompts": write_lines(work / "good_eval.txt", prompts(SHARED / "alpaca/seed_tasks.jsonl", a.val)),
        "bad_evaluation_prompts": write_lines(work / "bad_eval.txt", prompts(SHARED / "advbench/harmful_behaviors.csv", a.val)),
    }
    lines = [
        f"model = {json.dumps(str(Path(a.model).resolve()))}",
        f"n_trials = {a.trials}",
        f"n_startup_trials = {a.startup}",
        "seed = 0",
        'export_strategy = "merge"',
        f"study_checkpoint_dir = {json.dumps(str(work / 'checkpoints'))}",
        "",
    ]
    for key, path in files.items():
        lines += [f"[{key}]", f"dataset = {json.dumps(path)}", ""]
    (work / "config.toml").write_text("\n".join(lines))


TRIAL = re.compile(r"\[(\d+)\] \[Trial\s+(\d+)\] Refusals:\s*(\d+)/(\d+), KL divergence: ([0-9.]+)")


def choose(trials, kl_target):
    """burnish's rule: the fewest refusals among trials with KL <= target, else the lowest KL."""
    ok = [t for t in trials if t["kl"] <= kl_target]
    if ok:
        return min(ok, key=lambda t: (t["refusals"], t["kl"]))
    return min(trials, key=lambda t: t["kl"])


def run_heretic(a, work, save):
    """heretic in its notebook mode (menus read numbers from stdin): optimise, pick, save merged, exit."""
    heretic_config(a, work)
    env = dict(os.environ, KAGGLE_KERNEL_RUN_TYPE="batch", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    log = open(work.parent / "heretic.log", "w")
    p = subprocess.Popen([a.heretic], cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, bufsize=1)
    t, buf, state, chosen, front = time.time(), "", "pick", None, []

    def send(x):
        p.stdin.write(f"{x}\n")
        p.stdin.flush()

    while True:
        ch = p.stdout.read(1)
        if not ch:
            break
        log.write(ch)
        buf += ch
        if not (buf.endswith(": ") and ("Enter number" in buf[-40:] or "Path to the folder" in buf[-40:])):
            continue
        if "Path to the folder" in buf[-40:]:
            send(save)
        elif "How would you like to proceed?" in buf[-400:]:
            # An earlier run of the same model left its study checkpoint (heretic-work/checkpoints):
            # "Continue the previous run" (or, when it finished, "Show the results"), so an
            # interrupted comparison resumes its trials instead of starting again.
            send(1)
            buf = ""
        elif state == "pick":
            front = [dict(choice=int(c), trial=int(n), refusals=int(r), of=int(o), kl=float(k))
                     for c, n, r, o, k in TRIAL.findall(buf)]
            chosen = choose(front, a.kl_target)
            send(chosen["choice"])
            state = "save"
        elif state == "save":
            send(1)  # "Save the model to a local folder"
            state = "back"
        elif state == "back":
            send(5)  # "Return to the trial selection menu"
            state = "exit"
        else:
            # The trial menu again: its last entry exits.
            n = len(re.findall(r"^\[(\d+)\]", buf.split("Which trial")[-1], re.M))
            send(n)
        buf = buf[-4000:] if state != "pick" else buf
    p.wait()
    log.close()
    if chosen is None or not Path(save, "config.json").exists():
        sys.exit(f"heretic did not save a model; see {work.parent / 'heretic.log'}")
    return time.time() - t, chosen, front


def evaluate(a, model, out):
    """burnish eval on the held-out sets, KL to the model both were made from."""
    args = [
        a.burnish, "eval", "--model", str(model), "--source", str(Path(a.model).resolve()),
        "--harmful", str(SHARED / "refusal_direction/splits/harmful_val.json"),
        "--harmless", str(SHARED / "refusal_direction/splits/harmless_val.json"),
        "--limit", "50", "--max-new-tokens", "48", "--out", str(out),
    ]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = json.load(open(out / "report.json"))
    sets = r["sets"]
    harmful = next(v for v in sets.values() if v.get("kind") == "harmful")
    harmless = next(v for v in sets.values() if v.get("kind") != "harmful")
    return {
        "harmful_refused": harmful["refusal_rate"],
        "harmless_refused": harmless["refusal_rate"],
        "kl_source": r["kl_source"]["first_token"] if r.get("kl_source") else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the model to make refusal-free (HF directory)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--heretic", required=True, help="the heretic executable")
    ap.add_argument("--burnish", default=str(ROOT / "target/release/burnish"))
    ap.add_argument("--config", default=str(ROOT / "examples/configs/uncensor-ablate.toml"),
                    help="burnish's run file (an ablate method: mode ablate or subtract)")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--startup", type=int, default=12)
    ap.add_argument("--prompts", type=int, default=128, help="harmful and harmless prompts for the directions")
    ap.add_argument("--val", type=int, default=24, help="validation prompts of each kind for the search")
    ap.add_argument("--kl-target", type=float, default=0.1)
    ap.add_argument("--reuse-burnish", action="store_true",
                    help="keep OUT/burnish from an earlier run of this script (its wall time is then not known)")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    (out / "heretic-work").mkdir(parents=True, exist_ok=True)
    results = {}
    if a.reuse_burnish:
        if not (out / "burnish/merged/config.json").exists():
            sys.exit(f"--reuse-burnish: {out / 'burnish/merged'} holds no model from an earlier run")
        secs = None
    else:
        secs = run_burnish(a, out / "burnish")
    results["burnish"] = dict(seconds=secs, **evaluate(a, out / "burnish/merged", out / "eval-burnish"))
    if a.heretic != "none":
        secs, chosen, front = run_heretic(a, out / "heretic-work", str(out / "heretic"))
        results["heretic"] = dict(seconds=secs, chosen=chosen, front=front,
                                  **evaluate(a, out / "heretic", out / "eval-heretic"))
    results["settings"] = vars(a)
    (out / "compare.json").write_text(json.dumps(results, indent=2))
    print("| tool | harmful_val refused | harmless_val refused | KL to source (first token) | wall time |")
    print("|---|---|---|---|---|")
    for k in [k for k in ["burnish", "heretic"] if k in results]:
        r = results[k]
        wall = "–" if r["seconds"] is None else f"{r['seconds'] / 60:.1f} min"
        print(f"| {k} | {100 * r['harmful_refused']:.1f}% | {100 * r['harmless_refused']:.1f}% | "
              f"{r['kl_source']:.3f} | {wall} |")


if __name__ == "__main__":
    main()
