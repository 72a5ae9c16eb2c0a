#!/usr/bin/env python3
"""Train a few-shot classifier. Example: python train.py --way 5 --shot 1 --data-root PATH"""
import sys

from fewshot.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
