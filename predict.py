#!/usr/bin/env python3
"""Classify your own images with a trained model. Example:
python predict.py --checkpoint runs/mini_cpu/meta/best.pt --support my_classes/ --query photo.jpg more_photos/"""
import sys

from fewshot.cli import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
