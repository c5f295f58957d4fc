"""Export built LuCaFound datasets to Parquet (volumes embedded) or to the Hub, so that others load them with plain
`load_dataset("parquet", ...)` / `load_dataset("org/name")` and get the same features back (no scripts).

Command line: `python -m datasets_scripts.export synthetic preprocessed OUTPUT_DIR [--data-dir ...]
[--push-to-hub ORG/NAME --dry-run]`.
"""

import argparse
import json
import sys
from pathlib import Path

import datasets
from datasets.table import embed_table_storage

from modeling_lucafound.atomic_files import atomic_output, write_text_atomically


def _embedded(dataset):
    """The dataset with every file-backed value (NIfTI paths) replaced by the file's bytes."""
    return dataset.with_format("arrow").map(embed_table_storage, batched=True, batch_size=16).with_format(None)


def export_to_parquet(dataset_dict, output_dir, config_name="default", rows_per_file=64):
    """Write each split as `data/<config>/<split>-NNNNN-of-NNNNN.parquet` plus a README with the `configs` block.

    Files are written to temporary names in the same folder and renamed when complete. Returns the paths written.
    """
    output_dir = Path(output_dir)
    folder = output_dir / "data" / config_name
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, dataset in dataset_dict.items():
        dataset = _embedded(dataset)
        shard_count = max(1, -(-len(dataset) // rows_per_file))
        paths = []
        for index in range(shard_count):
            shard = dataset.shard(num_shards=shard_count, index=index, contiguous=True)
            path = folder / f"{split}-{index:05d}-of-{shard_count:05d}.parquet"
            with atomic_output(path) as temporary:
                shard.to_parquet(str(temporary))
            paths.append(path)
        written[split] = paths
    _write_card(output_dir, config_name, written)
    return written


def parquet_data_files(output_dir, config_name="default"):
    """The `data_files` mapping for `load_dataset("parquet", data_files=...)` of an export folder."""
    folder = Path(output_dir) / "data" / config_name
    splits = sorted({path.name.split("-")[0] for path in folder.glob("*.parquet")})
    return {split: sorted(str(path) for path in folder.glob(f"{split}-*.parquet")) for split in splits}


def load_exported(output_dir, config_name="default"):
    """Load an export folder back with the generic Parquet loader (what a user without this package does)."""
    return datasets.load_dataset("parquet", data_files=parquet_data_files(output_dir, config_name))


def _write_card(output_dir, config_name, written):
    card = Path(output_dir) / "README.md"
    configs = {}
    if card.exists():
        text = card.read_text(encoding="utf-8")
        if text.startswith("---\n") and "# configs-json:" in text:
            configs = json.loads(text.split("# configs-json:", 1)[1].split("\n", 1)[0])
    configs[config_name] = {split: f"data/{config_name}/{split}-*.parquet" for split in written}
    lines = ["---", f"# configs-json:{json.dumps(configs)}", "configs:"]
    for name, splits in sorted(configs.items()):
        lines.append(f"- config_name: {name}")
        lines.append("  data_files:")
        for split, pattern in splits.items():
            lines += [f"  - split: {split}", f"    path: {pattern}"]
    lines += [
        "---",
        "",
        'Exported by `datasets_scripts.export` (LuCaFound). Load with `load_dataset("parquet", ...)` or from the Hub.',
        "",
    ]
    write_text_atomically(card, "\n".join(lines))


def push_dataset_to_hub(
    dataset_dict, repo_id, config_name="default", private=True, token=None, dry_run=False, max_shard_size="500MB"
):
    """Push with `DatasetDict.push_to_hub` (files embedded, Parquet); `dry_run=True` only reports what would go."""
    plan = {
        "repo_id": repo_id,
        "config_name": config_name,
        "private": private,
        "splits": {
            split: {"rows": len(dataset), "bytes": dataset.data.nbytes} for split, dataset in dataset_dict.items()
        },
        "features": {name: str(feature) for name, feature in next(iter(dataset_dict.values())).features.items()},
    }
    if dry_run:
        return plan
    dataset_dict.push_to_hub(
        repo_id, config_name=config_name, private=private, token=token, max_shard_size=max_shard_size
    )
    return plan


def build_dataset(name, config_name, data_dir=None, cache_dir=None, **config_fields):
    """Build one LuCaFound dataset by short name (`synthetic`, `ct-rate`...) and return its `DatasetDict`."""
    from . import get_builder_class
    from .common import non_empty_splits

    builder = get_builder_class(name)(config_name=config_name, data_dir=data_dir, cache_dir=cache_dir, **config_fields)
    builder.download_and_prepare()
    return non_empty_splits(builder)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="short name, e.g. synthetic, dlcsd24, ct-rate")
    parser.add_argument("config", help="raw or preprocessed")
    parser.add_argument("output_dir")
    parser.add_argument("--data-dir")
    parser.add_argument("--cache-dir")
    parser.add_argument("--num-samples", type=int, help="synthetic cohort size")
    parser.add_argument("--image-size", type=int, nargs=3, help="preprocessed (depth, height, width)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID")
    parser.add_argument("--dry-run", action="store_true", help="with --push-to-hub: print the plan, upload nothing")
    args = parser.parse_args(argv)
    fields = {}
    if args.num_samples:
        fields["num_samples"] = args.num_samples
    if args.image_size:
        fields["image_size"] = tuple(args.image_size)
    from modeling_lucafound.errors import LuCaFoundInputError

    try:
        dataset_dict = build_dataset(args.dataset, args.config, args.data_dir, args.cache_dir, **fields)
        written = export_to_parquet(dataset_dict, args.output_dir, config_name=args.config)
        print(json.dumps({split: [str(path) for path in paths] for split, paths in written.items()}, indent=2))
        if args.push_to_hub:
            plan = push_dataset_to_hub(dataset_dict, args.push_to_hub, config_name=args.config, dry_run=args.dry_run)
            print(json.dumps(plan, indent=2))
    except LuCaFoundInputError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
