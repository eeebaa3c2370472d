"""`python -m benchmarks [NAME ...] [--quick] [--write]`: run the CPU suite, print its tables.

Each suite module (benchmarks/NAME.py) exposes `run(quick) -> str`, its Markdown section; see
benchmarks/README.md. With --write each section replaces its marked block in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import sys
import time
from datetime import datetime, timezone

from benchmarks.common import REPO_ROOT, machine_line

# name -> what it measures and where it comes from; the order is the order they run and appear in.
SUITE = {
    "training": "training tokens/s and time to a val loss, gptlab vs a transformers GPT2LMHeadModel loop (issue 9)",
    "generation": "generated tokens/s with and without the KV cache, and vs transformers generate (issue 5)",
    "prepare": "prepare MB/s and peak memory, and vs a single-process tiktoken encode loop (data issue)",
}
DOC = REPO_ROOT / "docs" / "benchmarks.md"
BUDGET_SECONDS = 600  # the whole CPU suite must finish within this on the 2-core machine


def load_modules(names: list[str]) -> dict:
    """Import every requested module before running any, so a missing one fails at once, not after minutes."""
    modules, problems = {}, []
    for name in names:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"benchmarks.{name}":
                raise  # the module exists but needs something that is not installed: show the real error
            problems.append(f"benchmarks/{name}.py is missing ({SUITE[name]})")
            continue
        if not callable(getattr(module, "run", None)):
            problems.append(f"benchmarks/{name}.py has no run(quick) -> str (the contract in benchmarks/README.md)")
            continue
        modules[name] = module
    if problems:
        raise SystemExit(
            "benchmarks: "
            + "; ".join(problems)
            + (f". Run the others by name: python -m benchmarks {' '.join(modules)}" if modules else "")
        )
    return modules


def provenance(command: str, seconds: float) -> str:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]  # other work on the machine: above the core count, the numbers were taken under load
    return f"_Command: `{command}` ({seconds:.0f} s, {date}, load average {load:.1f}). Machine: {machine_line()}._"


def replace_block(doc: str, name: str, body: str) -> str:
    """Put body between this module's markers, replacing what was there, or append a new marked block."""
    block = f"<!-- bench:{name} -->\n{body.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.DOTALL)
    if pattern.search(doc):
        return pattern.sub(lambda _: block, doc)
    return doc.rstrip("\n") + "\n\n" + block + "\n"


def write_doc(name: str, section: str) -> None:
    tmp = DOC.with_name(DOC.name + ".tmp")
    tmp.write_text(replace_block(DOC.read_text() if DOC.exists() else "", name, section))
    os.replace(tmp, DOC)  # never a half-written doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"suite modules to run (default: all): {', '.join(SUITE)}"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, numbers meaningless")
    parser.add_argument(
        "--write", action="store_true", help=f"replace each section's block in {DOC.relative_to(REPO_ROOT)}"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's own, one per core); 1 keeps a loaded machine usable",
    )
    parser.epilog = "The GPU script is separate: python -m benchmarks.gpu --help"
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in SUITE]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SUITE)}")
    if args.quick and args.write:
        parser.error("--quick numbers are meaningless; do not --write them to the doc")
    names = args.names or list(SUITE)
    import torch

    torch.set_flush_denormal(True)  # as gptlab does on CPU: denormals made backward passes 10-20x slower here
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # gptlab's setup_device keeps it (device.set_threads)
        torch.set_num_threads(args.threads)
    modules = load_modules(names)

    command = "python -m benchmarks" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])
    )
    start = time.perf_counter()
    seconds = {}
    for name, module in modules.items():
        print(f"benchmarks: running {name} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        section = module.run(quick=args.quick).strip()
        seconds[name] = time.perf_counter() - t
        section += "\n\n" + provenance(command, seconds[name])
        print(section + "\n", flush=True)
        if args.write:  # after each module, so a later failure keeps the sections already measured
            write_doc(name, section)
    total = time.perf_counter() - start
    print(
        "benchmarks: " + ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items()) + f"; total {total:.0f} s",
        file=sys.stderr,
    )
    if not args.quick and len(names) == len(SUITE) and total > BUDGET_SECONDS:
        print(
            f"benchmarks: the suite took {total:.0f} s, over its {BUDGET_SECONDS} s budget; shrink a module's sizes",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
