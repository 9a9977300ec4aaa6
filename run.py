#!/usr/bin/env python
"""Entry point: `python run.py --agent reinforce`. Everything lives in rlprompt_math.cli."""

from rlprompt_math.cli import main

if __name__ == "__main__":
    main()
