"""Helpers shared by the side-by-side benchmark scripts."""
import json, os, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd, env):
    """Runs `cmd` under a small wrapper process whose only child is `cmd`, so the wrapper's
    RUSAGE_CHILDREN peak is exactly that command's peak resident memory. `cmd` prints one JSON line."""
    wrapper = ("import json,resource,subprocess,sys;p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
               "sys.stderr.write(p.stderr[-3000:]);r=json.loads(p.stdout.strip().splitlines()[-1]);"
               "r['peak_rss_mb']=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024;"
               "print(json.dumps(r));sys.exit(p.returncode)")
    p = subprocess.run([sys.executable, "-c", wrapper] + cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd[:3])}...\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_binary(name):
    """Builds `cargo bench --bench NAME` (release) and returns the executable's path."""
    out = subprocess.run(["cargo", "bench", "--bench", name, "--no-run", "--message-format=json"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == name and msg.get("executable"):
            return msg["executable"]
    sys.exit(f"could not find the {name} bench binary")
