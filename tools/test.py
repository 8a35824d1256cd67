"""Evaluate a trained head: the same as `dinov2-dense test CONFIG CHECKPOINT ...`."""

import argparse
import sys

from dinov2_dense.engine.entry import add_test_arguments, run_test

if __name__ == "__main__":
    sys.exit(run_test(add_test_arguments(argparse.ArgumentParser(description=__doc__)).parse_args()))
