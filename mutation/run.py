"""`make mutation`: cosmic-ray on the modules where a silent bug costs most, each against the tests that cover it.

For each module: a cosmic-ray session (mutation/<module>.sqlite), a baseline run, every mutant applied in turn
to a scratch copy of the tree and the covering tests run against it (stopping at the first failure), then the
share of mutants killed. Slow (minutes per module): not part of `make test`. Prints a table and writes
mutation/results.json; the survivors are listed for review (README, "Mutation testing").
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PYTEST = f"{sys.executable} -m pytest -x -q -p no:cacheprovider --timeout 120"
MODULES: dict[str, list[str]] = {
    "shared/auth.py": ["tests/test_token_rules.py", "tests/test_secret_rotation.py", "tests/test_sessions.py",
                       "tests/test_auth_login.py", "tests/test_admin_and_sessions.py", "tests/test_security.py",
                       "tests/test_bad_input.py"],
    "shared/sessions.py": ["tests/test_sessions.py", "tests/test_admin_and_sessions.py", "tests/test_token_rules.py",
                           "tests/test_listen.py"],
    "services/auth/passwords.py": ["tests/test_login_storm.py", "tests/test_auth_login.py",
                                   "tests/test_users_cli.py"],
    "services/auth/users.py": ["tests/test_user_rules.py", "tests/test_admin_and_sessions.py",
                               "tests/test_accreditation.py", "tests/test_standing_quota.py",
                               "tests/test_users_cli.py"],
    "services/chat/quota.py": ["tests/test_quota_rules.py", "tests/test_chat_quota.py",
                               "tests/test_chat_failures.py", "tests/test_faults.py", "tests/test_chat.py"],
    "services/chat/workflow.py": ["tests/test_chat.py", "tests/test_rate_limits.py", "tests/test_chat_quota.py",
                                  "tests/test_chat_failures.py",
                                  "tests/test_attachments.py", "tests/test_knowledge.py", "tests/test_faults.py"],
    "services/chat/attachments.py": ["tests/test_attachments.py"],
    "services/chat/extraction.py": ["tests/test_attachments.py"],
    "services/chat/writer.py": ["tests/test_streaming.py"],
    "services/auth/safeguard/rules.py": ["tests/test_safeguard.py"],
    "services/auth/safeguard/views.py": ["tests/test_safeguard.py"],
    "services/auth/admin/analytics.py": ["tests/test_supervision.py"],
}  # fmt: skip

CONFIG = """[cosmic-ray]
module-path = "{module}"
timeout = 300.0
excluded-modules = []
test-command = "{command}"

[cosmic-ray.distributor]
name = "local"

# `|` is only written in type annotations (never evaluated: `from __future__ import annotations`) and dict merges
# here; its replacements are equivalent mutants. Lines marked `# pragma: no mutate` are skipped as well.
[cosmic-ray.filters.operators-filter]
exclude-operators = ["core/ReplaceBinaryOperator_BitOr_.*"]
"""


def run_module(module: str, tests: list[str], work: Path, out: Path, *, resume: bool = False) -> dict[str, object]:
    stem = module.replace("/", ".").removesuffix(".py")
    config, session = out / f"{stem}.toml", out / f"{stem}.sqlite"
    cosmic = [sys.executable, "-m", "cosmic_ray.cli"]
    if not (resume and session.exists()):
        config.write_text(CONFIG.format(module=module, command=f"{PYTEST} {' '.join(tests)}"), encoding="utf-8")
        session.unlink(missing_ok=True)
        subprocess.run([*cosmic, "init", str(config), str(session)], cwd=work, check=True)
        bin_dir = Path(sys.executable).parent
        subprocess.run([bin_dir / "cr-filter-operators", str(session), str(config)], cwd=work, check=True)
        subprocess.run([bin_dir / "cr-filter-pragma", str(session)], cwd=work, check=True)
        subprocess.run([*cosmic, "baseline", str(config)], cwd=work, check=True)
    # With --resume, only the mutants without a result yet run (on a fresh copy of the tree: an interrupted run
    # may have left its scratch copy mutated).
    subprocess.run([*cosmic, "exec", str(config), str(session)], cwd=work, check=True)
    return summarize(module, session, work)


def summarize(module: str, session: Path, work: Path) -> dict[str, object]:
    """Killed and survivors among the mutants that have a result (all of them once the run is complete)."""
    cosmic = [sys.executable, "-m", "cosmic_ray.cli"]
    dump = subprocess.run([*cosmic, "dump", str(session)], cwd=work, check=True, capture_output=True, text=True)
    total = killed = 0
    survivors = []
    for line in dump.stdout.splitlines():
        job, result = json.loads(line)
        if not result or result.get("test_outcome") is None or str(result.get("worker_outcome")).lower() == "skipped":
            continue
        total += 1
        # An incompetent mutant (the module no longer even imports) is caught by any test run.
        if str(result["test_outcome"]).lower() in {"killed", "incompetent"}:
            killed += 1
        else:
            mutation = job["mutations"][0]
            survivors.append(
                {
                    "line": mutation["start_pos"][0],
                    "operator": mutation["operator_name"],
                    "diff": result.get("diff", ""),
                }
            )
    score = round(100 * killed / total, 1) if total else None
    pending = sum(1 for line in dump.stdout.splitlines() if not json.loads(line)[1])
    return {
        "module": module,
        "mutants": total,
        "killed": killed,
        "score": score,
        "not_run": pending,
        "survivors": survivors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m mutation.run", description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=list(MODULES), help="modules to mutate (default: all)")
    parser.add_argument("--resume", action="store_true", help="go on with an interrupted run's session")
    parser.add_argument("--summarize", action="store_true", help="only report the sessions as they stand")
    args = parser.parse_args()
    out = ROOT / "mutation" / "out"
    out.mkdir(parents=True, exist_ok=True)
    results = []
    # cosmic-ray edits files in place: work on a copy, never on the checkout.
    with tempfile.TemporaryDirectory(prefix="wibot-mutation-") as scratch:
        work = Path(scratch) / "tree"
        shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".venv", ".git", ".run", ".data", "mutation"))
        for module in args.modules:
            if args.summarize:
                stem = module.replace("/", ".").removesuffix(".py")
                results.append(summarize(module, out / f"{stem}.sqlite", work))
            else:
                results.append(run_module(module, MODULES[module], work, out, resume=args.resume))
            r = results[-1]
            print(f"{module:<32} {r['killed']}/{r['mutants']} killed ({r['score']}%)", flush=True)
    previous = {}
    report = ROOT / "mutation" / "results.json"
    if report.exists():
        previous = {r["module"]: r for r in json.loads(report.read_text())}
    previous.update({r["module"]: r for r in results})
    report.write_text(json.dumps(list(previous.values()), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
