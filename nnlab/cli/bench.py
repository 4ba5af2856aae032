"""``nnlab bench``: nnlab against PyTorch on the same work (``nnlab.bench`` parses its own
options, --help included)."""

__all__ = ["add_parser", "run_bench"]


def add_parser(commands):
    bench = commands.add_parser("bench", help="nnlab against PyTorch on the same work, as ratios", add_help=False)
    bench.set_defaults(run=run_bench)


def run_bench(args):
    from .. import bench

    return bench.main(args.bench_args)
