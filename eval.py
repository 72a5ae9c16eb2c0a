#!/usr/bin/env python3
"""Evaluate a checkpoint. Example: python eval.py --checkpoint runs/default/meta/best.pt"""
import os
import sys

# Evaluation on cached features is bound by the EMD layer, whose worker threads need the cores
# that torch's OpenMP threads would otherwise keep busy spinning between small tensor ops.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fewshot.cli import eval_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(eval_main())
