"""Run ``crossent bench linear`` (same arguments), e.g. the judged CPU comparison::

    python benchmarks/linear_cross_entropy.py linear --preset cpu-judged --rounds 2 \
        --impls crossent torch_chunked torch_logits --json benchmarks/linear_cpu.json

Results and the commands used are recorded in BENCHMARKS.md.
"""

import argparse
import sys

from crossent.bench import command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="linear_cross_entropy.py")
    command.add_arguments(parser)
    sys.exit(command.run(parser.parse_args()))
