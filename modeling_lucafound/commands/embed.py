"""`lucafound embed`: CT files, folders, DICOM series or a CSV of paths -> one Parquet row of CT features per scan."""

EXAMPLE = """examples:
  lucafound embed scans/ --model ./lucafound-tiny --output features.parquet
  lucafound embed cohort.csv --model org/lucafound --output features.parquet --device cuda --batch-size 8
  accelerate launch --multi_gpu -m modeling_lucafound.cli embed cohort.csv --model org/lucafound --output f.parquet

A CSV of scans has a `path` column (CT file or DICOM series folder; relative to the CSV) and optionally `id`
(pseudonymous row ids) and `series_uid`. Re-running the same command resumes: scans already embedded are skipped.
"""


def register(subparsers):
    import argparse

    parser = subparsers.add_parser(
        "embed",
        help="embed CT scans into a Parquet table of features (resumable, one row per scan)",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="CT files, folders, DICOM series folders or CSV lists")
    parser.add_argument("--model", required=True, help="saved LuCaFound folder or Hub id")
    parser.add_argument("--output", required=True, help="Parquet file to write (resumed if it exists)")
    parser.add_argument("--image-processor", default=None, help="folder of the image processor (default: --model)")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--batch-size", type=int, default=2, help="scans per forward pass (default 2)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader processes reading and preprocessing")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="encoder precision; auto = bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--rows-per-part", type=int, default=64, help="rows per progress file (resume granularity)")
    parser.add_argument("--overwrite", action="store_true", help="start the output again instead of resuming")
    parser.add_argument("--skip-failed", action="store_true", help="do not retry scans that failed in an earlier run")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when any scan failed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args):
    import sys

    from ..embedding import EmbeddingInputError, collect_scan_inputs, embed_ct_scans

    if args.batch_size < 1 or args.num_workers < 0 or args.rows_per_part < 1:
        raise EmbeddingInputError("--batch-size and --rows-per-part must be >= 1 and --num-workers >= 0.")
    scans = collect_scan_inputs(args.inputs)
    summary = embed_ct_scans(
        scans,
        args.model,
        args.output,
        image_processor=args.image_processor,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        dtype=args.dtype,
        overwrite=args.overwrite,
        retry_failed=not args.skip_failed,
        rows_per_part=args.rows_per_part,
        revision=args.revision,
        progress=not args.no_progress,
    )
    # One write per line, so reports of processes sharing a terminal under torchrun do not interleave.
    sys.stderr.write(
        f"{summary.output}: {summary.total} scans, {summary.skipped} already done, {summary.embedded} embedded, "
        f"{summary.failed} failed ({summary.feature_size}-d features, {summary.seconds:.1f} s)\n"
    )
    sys.stderr.flush()
    if summary.failed:
        print("failed scans have status 'failed' and the reason in the 'error' column", file=sys.stderr)
    return 1 if (args.strict and summary.failed) else 0
