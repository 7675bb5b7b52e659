"""The report path and config validation are torch-free: envs/report.yaml has no torch (the
aggregate, figures and front_page rules run in it under --sdm conda), and every Snakemake
start-up validates the config."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

TORCH_FREE = ["ordermerge.report", "ordermerge.figures", "ordermerge.claims", "ordermerge.config",
              "ordermerge.plan", "ordermerge.layout", "ordermerge.catalog", "ordermerge.atomic",
              "ordermerge.jsonl", "ordermerge.data"]


def test_report_and_config_modules_do_not_import_torch() -> None:
    code = (f"import {', '.join(TORCH_FREE)}; import sys; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
