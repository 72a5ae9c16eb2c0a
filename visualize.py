#!/usr/bin/env python3
"""Draw what DeepEMD matched. Example:
python visualize.py --checkpoint runs/default/meta/best.pt --data-root PATH --episode 0 --out fig.png"""
import sys

from fewshot.cli import visualize_main

if __name__ == "__main__":
    sys.exit(visualize_main())
