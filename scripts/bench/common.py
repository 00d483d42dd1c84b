"""Helpers shared by the side-by-side benchmark scripts."""
import json, os, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd, env, gpu=False):
    """Runs `cmd` under a small wrapper process whose only child is `cmd`, so the wrapper's
    RUSAGE_CHILDREN peak is exactly that command's peak resident memory. `cmd` prints one JSON line.
    With `gpu`, nvidia-smi is read every 50 ms while it runs: `peak_gpu_mb` is the largest memory in
    use on GPU 0 (the same for every framework, whatever its allocator reports)."""
    if gpu:
        return _with_gpu_peak(cmd, env)
    wrapper = ("import json,resource,subprocess,sys;p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
               "sys.stderr.write(p.stderr[-3000:]);r=json.loads(p.stdout.strip().splitlines()[-1]);"
               "r['peak_rss_mb']=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024;"
               "print(json.dumps(r));sys.exit(p.returncode)")
    p = subprocess.run([sys.executable, "-c", wrapper] + cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd[:3])}...\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_binary(name):
    """Builds `cargo bench --bench NAME` (release; with BURNISH_BENCH_FEATURES=cuda, say, those cargo
    features) and returns the executable's path. BURNISH_BENCH_DIR=DIR uses the prebuilt DIR/NAME
    instead (a GPU machine without a Rust toolchain; scripts/bench/gpu.sh)."""
    if os.environ.get("BURNISH_BENCH_DIR"):
        return os.path.join(os.environ["BURNISH_BENCH_DIR"], name)
    features = os.environ.get("BURNISH_BENCH_FEATURES")
    extra = ["--features", features] if features else []
    out = subprocess.run(["cargo", "bench", "--bench", name, "--no-run", "--message-format=json"] + extra,
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == name and msg.get("executable"):
            return msg["executable"]
    sys.exit(f"could not find the {name} bench binary")


def _with_gpu_peak(cmd, env):
    import threading, time
    peak, done = [0.0], threading.Event()

    def poll():
        while not done.is_set():
            q = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                               capture_output=True, text=True)
            if q.returncode == 0 and q.stdout.strip():
                peak[0] = max(peak[0], float(q.stdout.split()[0]))
            time.sleep(0.05)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        r = run(cmd, env)
    finally:
        done.set()
        t.join()
    r["peak_gpu_mb"] = peak[0]
    return r


def write_result(out_dir, result):
    """Writes `result` as OUT_DIR/result.json atomically (a temporary file, then a rename), so an
    interrupted run never leaves a half-written file where an earlier result was."""
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "result.json")
    print(f"wrote {out / 'result.json'}")
