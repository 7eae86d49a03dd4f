#!/usr/bin/env python
"""Pretrain the CPU demo's tiny base model and write src/relightflow/data/demo_base.safetensors.

Usage: PYTHONPATH=src python scripts/build_demo_base.py --seed 0   (see relightflow.testing.demo_base)
"""

from relightflow.testing.demo_base import main

if __name__ == "__main__":
    main()
