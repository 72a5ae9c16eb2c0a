#!/usr/bin/env python3
"""Evaluate a checkpoint. Example: python eval.py --checkpoint runs/default/meta/best.pt"""
import sys

from fewshot.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
