"""Embed many CT scans with a LuCaFound encoder into one Parquet table: resumable, fault-tolerant, shardable.

One row per scan: `id`, `status` ("ok" or "failed"), `error`, `feature` (the encoder's pooled CT feature, 1024-d for
Swin3D-B), `crop_bbox` ([[z0, z1], [y0, y1], [x0, x1]] voxels of the original volume), `spacing` and `shape` of the
original volume. No DICOM header field is copied, so no patient-identifying field can leak into the table.

Progress is saved as small Parquet part files (`<output>.parts/`, each written atomically) and merged into the
output at the end (atomically too), so an interrupted run resumes where it stopped. Under `accelerate launch` (or
`torchrun`) every process embeds its own share of the scans.
"""

import csv
import json
import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic_files import atomic_output
from .errors import LuCaFoundInputError


logger = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_FAILED = "failed"
CT_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mhd", ".mha")
TABLE_METADATA_KEY = b"lucafound"
OUTPUT_FORMAT_VERSION = 1


class EmbeddingInputError(LuCaFoundInputError):
    """An `embed` input (path, folder, CSV) that does not exist or cannot be turned into a list of scans."""


class DuplicateScanIdError(LuCaFoundInputError):
    """Two different scans would get the same row id in the feature table."""


class NotALuCaFoundModelError(LuCaFoundInputError):
    """A model folder or Hub id that holds no LuCaFound CT encoder (or no image processor to prepare its input)."""


class FeatureTableMismatchError(LuCaFoundInputError):
    """An existing feature table that was written by another model, so new rows cannot be appended to it."""


@dataclass(frozen=True)
class ScanInput:
    """One scan to embed: its row id, where it is, and (for a folder holding several series) which series."""

    id: str
    source: str
    series_uid: str | None = None


# --------------------------------------------------------------------------------------------------------------
# Inputs: files, folders, DICOM series folders, CSV lists
# --------------------------------------------------------------------------------------------------------------


def _is_ct_file(path):
    return path.name.lower().endswith(CT_FILE_SUFFIXES)


def _looks_like_dicom(path):
    """True for a file with the DICOM preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _folder_holds_dicom(folder):
    """True when `folder` directly holds at least one DICOM file (so it is one series folder)."""
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and (entry.suffix.lower() == ".dcm" or _looks_like_dicom(entry)):
            return True
    return False


def _as_id(path):
    return Path(os.path.normpath(path)).as_posix()


def scans_in_folder(folder):
    """Every scan under `folder`: each CT file and each folder that directly holds DICOM files, in sorted order."""
    folder = Path(folder)
    scans = []
    if _folder_holds_dicom(folder):
        scans.append(ScanInput(id=_as_id(folder), source=str(folder)))
    for root, directories, files in os.walk(folder):
        directories.sort()
        root_path = Path(root)
        for name in sorted(files):
            path = root_path / name
            if _is_ct_file(path):
                scans.append(ScanInput(id=_as_id(path), source=str(path)))
        for name in directories:
            subfolder = root_path / name
            if _folder_holds_dicom(subfolder):
                scans.append(ScanInput(id=_as_id(subfolder), source=str(subfolder)))
    return scans


def scans_in_csv(csv_path, path_column="path", id_column="id", series_column="series_uid"):
    """Scans listed in a CSV file: a `path` column (relative paths are relative to the CSV's folder), optional
    `id` (pseudonymous row ids of your choice) and `series_uid` (which series of a folder holding several)."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        if path_column not in header:
            raise EmbeddingInputError(
                f"{str(csv_path)!r} has no {path_column!r} column (columns: {header}). A CSV of scans needs a "
                f"{path_column!r} column with one CT file or DICOM series folder per row; optional: {id_column!r}, "
                f"{series_column!r}."
            )
        scans = []
        for line_number, row in enumerate(reader, start=2):
            row = {(key or "").strip(): (value or "").strip() for key, value in row.items()}
            if not row.get(path_column):
                raise EmbeddingInputError(f"{str(csv_path)!r} line {line_number}: empty {path_column!r}.")
            path = Path(row[path_column])
            if not path.is_absolute():
                path = csv_path.parent / path
            scan_id = row.get(id_column) or _as_id(path)
            scans.append(ScanInput(id=scan_id, source=str(path), series_uid=row.get(series_column) or None))
    return scans


def collect_scan_inputs(inputs, path_column="path", id_column="id", series_column="series_uid"):
    """Expand command-line inputs (CT files, folders, DICOM series folders, CSV lists) into unique `ScanInput`s.

    Row ids are the paths as written (normalised, forward slashes), or a CSV's `id` column: the same command gives
    the same ids, which is what resuming relies on.
    """
    scans = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise EmbeddingInputError(f"Input {str(item)!r} does not exist. Pass CT files, folders or a CSV of paths.")
        if path.is_dir():
            found = scans_in_folder(path)
            if not found:
                raise EmbeddingInputError(
                    f"Folder {str(item)!r} holds no CT file ({', '.join(CT_FILE_SUFFIXES)}) and no DICOM series."
                )
            scans.extend(found)
        elif path.suffix.lower() == ".csv":
            scans.extend(scans_in_csv(path, path_column, id_column, series_column))
        elif _is_ct_file(path):
            scans.append(ScanInput(id=_as_id(path), source=str(path)))
        elif path.suffix.lower() == ".dcm" or _looks_like_dicom(path):
            raise EmbeddingInputError(
                f"{str(item)!r} is a single DICOM file; pass the folder of its series ({str(path.parent)!r})."
            )
        else:
            raise EmbeddingInputError(
                f"{str(item)!r} is neither a CT file ({', '.join(CT_FILE_SUFFIXES)}), a folder nor a .csv list."
            )
    unique = {}
    for scan in scans:
        previous = unique.get(scan.id)
        if previous is not None and previous != scan:
            raise DuplicateScanIdError(
                f"Two scans would share the id {scan.id!r} ({previous.source!r} and {scan.source!r}). Give each row "
                "its own id with an `id` column in a CSV of paths."
            )
        unique[scan.id] = scan
    return list(unique.values())


# --------------------------------------------------------------------------------------------------------------
# Reading and preprocessing (runs in DataLoader workers)
# --------------------------------------------------------------------------------------------------------------


def describe_error(error):
    """One line for the `error` column: the exception type and its message."""
    message = " ".join(str(error).split()) or "no message"
    return f"{type(error).__name__}: {message}"


class CTScanDataset:
    """Map-style dataset: reads and preprocesses one scan per item, returning the error instead of raising.

    Items are dicts with `id`, `pixel_values` (C, D, H, W) float32 and the crop geometry, or `id` and `error`.
    """

    def __init__(self, scans, image_processor):
        self.scans = list(scans)
        self.image_processor = image_processor

    def __len__(self):
        return len(self.scans)

    def __getitem__(self, index):
        scan = self.scans[index]
        try:
            encoded = self.image_processor(
                scan.source, series_uid=scan.series_uid, return_crop_info=True, return_tensors="np"
            )
            crop_info = encoded["crop_info"][0]
            return {
                "id": scan.id,
                "pixel_values": np.asarray(encoded["pixel_values"][0], dtype=np.float32),
                "crop_bbox": [[int(start), int(stop)] for start, stop in crop_info["bbox"]],
                "spacing": [float(value) for value in crop_info["spacing"]],
                "shape": [int(size) for size in crop_info["shape"]],
                "error": None,
            }
        except Exception as error:  # one bad scan must not stop 10,000 others: record it in its row
            return {"id": scan.id, "error": describe_error(error)}


def keep_as_list(items):
    """DataLoader collate function that keeps the per-scan dicts (failed items have no pixel_values)."""
    return items


def _single_threaded_worker(worker_id):
    import torch

    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------------------
# The feature table: schema, part files, merging, resuming
# --------------------------------------------------------------------------------------------------------------


def feature_table_schema(feature_size, metadata):
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("feature", pa.list_(pa.float32(), feature_size)),
            pa.field("crop_bbox", pa.list_(pa.list_(pa.int32(), 2), 3)),
            pa.field("spacing", pa.list_(pa.float32(), 3)),
            pa.field("shape", pa.list_(pa.int32(), 3)),
        ],
        metadata={TABLE_METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()},
    )


def write_parquet_atomically(table, path):
    """Write `table` to `path` through a temporary file in the same folder, so a crash never leaves half a file."""
    import pyarrow.parquet as pq

    with atomic_output(path) as temporary:
        pq.write_table(table, str(temporary))


def parts_folder_for(output):
    """Where the part files of `output` live while a run is in progress."""
    output = Path(output)
    return output.parent / f"{output.name}.parts"


def table_metadata(table_or_schema):
    schema = getattr(table_or_schema, "schema", table_or_schema)
    raw = (schema.metadata or {}).get(TABLE_METADATA_KEY)
    return json.loads(raw) if raw else {}


def _existing_tables(output):
    """The finished output (if any) and every part file of an interrupted run, oldest first."""
    import pyarrow.parquet as pq

    output = Path(output)
    tables = []
    if output.exists():
        tables.append(pq.read_table(output))
    parts = parts_folder_for(output)
    if parts.is_dir():
        for part in sorted(parts.glob("part-*.parquet")):
            tables.append(pq.read_table(part))
    return tables


def _check_compatible(tables, metadata, output):
    for table in tables:
        existing = table_metadata(table)
        for key in ("encoder_fingerprint", "feature_size"):
            if existing.get(key) != metadata.get(key):
                raise FeatureTableMismatchError(
                    f"{str(output)!r} already holds features of another encoder (model {existing.get('model')!r}, "
                    f"{key} {existing.get(key)!r}; now {metadata.get('model')!r}, {metadata.get(key)!r}). Write to a "
                    "new --output, or pass --overwrite to start it again."
                )


def merge_feature_tables(tables, schema):
    """One table with one row per id: later rows replace earlier ones, except that a failure never replaces a success."""
    import pyarrow as pa

    if not tables:
        return schema.empty_table()
    combined = pa.concat_tables([table.select(schema.names).cast(schema) for table in tables])
    ids = combined.column("id").to_pylist()
    statuses = combined.column("status").to_pylist()
    chosen = {}
    for row, (scan_id, status) in enumerate(zip(ids, statuses)):
        previous = chosen.get(scan_id)
        if previous is None or status == STATUS_OK or statuses[previous] != STATUS_OK:
            chosen[scan_id] = row
    order = np.array(sorted(chosen.values()), dtype=np.int64)
    return combined.take(pa.array(order)).replace_schema_metadata(schema.metadata)


class FeatureTableWriter:
    """Collects rows and writes them as atomic part files; `finish` merges everything into the output."""

    def __init__(self, output, schema, process_index=0, rows_per_part=64):
        self.output = Path(output)
        self.schema = schema
        self.process_index = process_index
        self.rows_per_part = rows_per_part
        self.parts = parts_folder_for(self.output)
        self.pending = []
        existing = sorted(self.parts.glob(f"part-p{process_index:03d}-*.parquet")) if self.parts.is_dir() else []
        self.next_part = 1 + max((int(path.stem.rsplit("-", 1)[1]) for path in existing), default=0)

    def add(self, row):
        self.pending.append(row)
        if len(self.pending) >= self.rows_per_part:
            self.flush()

    def flush(self):
        import pyarrow as pa

        if not self.pending:
            return
        table = pa.Table.from_pylist(self.pending, schema=self.schema)
        write_parquet_atomically(table, self.parts / f"part-p{self.process_index:03d}-{self.next_part:06d}.parquet")
        self.next_part += 1
        self.pending = []

    def finish(self):
        """Merge the existing output and all part files into the output (atomically), then remove the parts."""
        self.flush()
        merged = merge_feature_tables(_existing_tables(self.output), self.schema)
        write_parquet_atomically(merged, self.output)
        if self.parts.is_dir():
            for part in self.parts.glob("part-*.parquet"):
                part.unlink()
            try:
                self.parts.rmdir()
            except OSError:  # a temporary file of another process is still there; harmless
                pass
        return merged


def _remove_output(output):
    output = Path(output)
    if output.exists():
        output.unlink()
    parts = parts_folder_for(output)
    if parts.is_dir():
        for part in parts.iterdir():
            part.unlink()
        parts.rmdir()


# --------------------------------------------------------------------------------------------------------------
# Model loading and the embedding loop
# --------------------------------------------------------------------------------------------------------------


def resolve_dtype(dtype, device):
    """torch dtype for "auto" (bfloat16 on CUDA, float32 elsewhere), "float32", "bfloat16" or "float16"."""
    import torch

    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    choices = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
               "float16": torch.float16, "fp16": torch.float16}
    if dtype not in choices:
        raise LuCaFoundInputError(f"--dtype must be one of auto, {', '.join(choices)}; got {dtype!r}.")
    return choices[dtype]


def resolve_device(device):
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_ct_encoder(model_name_or_path, device="cpu", dtype=None, revision=None):
    """The CT encoder of a LuCaFound folder or Hub id (dual encoder, vision model or task head), in eval mode."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=True, revision=revision)
    except (OSError, ValueError) as error:
        raise NotALuCaFoundModelError(
            f"Cannot load a model config from {str(model_name_or_path)!r}: {describe_error(error)}. Pass a saved "
            "LuCaFound folder (with config.json) or a Hub id that is in the local cache when offline."
        ) from None
    if not str(getattr(config, "model_type", "")).startswith("lucafound"):
        raise NotALuCaFoundModelError(
            f"{str(model_name_or_path)!r} is a {config.model_type!r} model, not a LuCaFound model."
        )
    model = AutoModel.from_pretrained(model_name_or_path, trust_remote_code=True, revision=revision)
    encoder = model.vision_model if hasattr(model, "vision_model") else model
    encoder = encoder.to(device=device, dtype=dtype)
    encoder.eval()
    return encoder


def load_image_processor(model_name_or_path, revision=None):
    """The image processor saved with the model (preprocessor_config.json): preprocessing must match training."""
    from .image_processing_lucafound import LuCaFoundImageProcessor

    try:
        return LuCaFoundImageProcessor.from_pretrained(model_name_or_path, revision=revision)
    except OSError:
        raise NotALuCaFoundModelError(
            f"{str(model_name_or_path)!r} has no image processor (preprocessor_config.json). Save the one the model "
            "was trained with next to it (`LuCaFoundImageProcessor(...).save_pretrained(folder)`), or pass "
            "--image-processor FOLDER."
        ) from None


@dataclass
class EmbeddingSummary:
    """What one `embed_ct_scans` call did."""

    output: str
    total: int
    skipped: int
    embedded: int
    failed: int
    seconds: float
    feature_size: int

    @property
    def scans_per_second(self):
        processed = self.embedded + self.failed
        return processed / self.seconds if self.seconds > 0 else float("nan")


def distributed_state():
    """(process_index, num_processes, accelerate state or None): one process unless launched by accelerate/torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        # without GPUs accelerate only takes a multi-process launch for real when told to run on CPU (gloo)
        state = PartialState(cpu=not torch.cuda.is_available())
        return state.process_index, state.num_processes, state
    return 0, 1, None


def encoder_fingerprint(encoder):
    """SHA-256 of the encoder's float32 weights: the identity of the features, whatever path the model came from."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def shard_of(scan_id, num_processes):
    """Which process embeds `scan_id`: a stable hash of the id, so shares do not depend on what is already done."""
    return zlib.crc32(scan_id.encode("utf-8")) % num_processes


def embed_ct_scans(
    inputs,
    model,
    output,
    image_processor=None,
    batch_size=2,
    num_workers=2,
    device="auto",
    dtype="auto",
    overwrite=False,
    retry_failed=True,
    rows_per_part=64,
    revision=None,
    progress=True,
    process_index=None,
    num_processes=None,
):
    """Embed every scan of `inputs` (paths or `ScanInput`s) with the CT encoder of `model` into the Parquet `output`.

    Scans already in `output` with status "ok" are skipped (failed ones are retried unless `retry_failed=False`).
    `model` and `image_processor` may be folders / Hub ids or loaded objects. Returns an `EmbeddingSummary`.
    """
    import torch
    from torch.utils.data import DataLoader

    started = time.perf_counter()
    scans = [scan for scan in inputs if isinstance(scan, ScanInput)]
    if len(scans) != len(inputs):
        scans = collect_scan_inputs(inputs)
    state = None
    if process_index is None or num_processes is None:
        process_index, num_processes, state = distributed_state()
    if state is not None and state.device.type != "cpu":
        device = state.device
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)

    model_name = str(model) if isinstance(model, (str, os.PathLike)) else getattr(model, "name_or_path", "") or type(model).__name__
    if image_processor is None:
        if not isinstance(model, (str, os.PathLike)):
            raise NotALuCaFoundModelError("Pass `image_processor` when `model` is a loaded model object.")
        image_processor = load_image_processor(model, revision=revision)
    elif isinstance(image_processor, (str, os.PathLike)):
        image_processor = load_image_processor(image_processor, revision=revision)
    encoder = load_ct_encoder(model, "cpu", None, revision) if isinstance(model, (str, os.PathLike)) else model
    if hasattr(encoder, "vision_model"):
        encoder = encoder.vision_model
    fingerprint = encoder_fingerprint(encoder)
    encoder = encoder.to(device=device, dtype=torch_dtype).eval()
    feature_size = int(encoder.config.hidden_size)
    metadata = {
        "format_version": OUTPUT_FORMAT_VERSION,
        "model": model_name,
        "feature_size": feature_size,
        "encoder_fingerprint": fingerprint,
        "feature": "pooler_output of the LuCaFound CT encoder (global average of the last Swin stage)",
        "image_processor": image_processor.to_dict() if hasattr(image_processor, "to_dict") else {},
    }
    metadata["image_processor"].pop("_processor_class", None)
    schema = feature_table_schema(feature_size, metadata)

    if overwrite and process_index == 0:
        _remove_output(output)
    if state is not None:
        state.wait_for_everyone()
    existing = _existing_tables(output)
    _check_compatible(existing, metadata, output)
    done = set()
    for table in existing:
        for scan_id, status in zip(table.column("id").to_pylist(), table.column("status").to_pylist()):
            if status == STATUS_OK or not retry_failed:
                done.add(scan_id)
    todo = [scan for scan in scans if scan.id not in done]
    skipped = len(scans) - len(todo)
    if state is not None:
        state.wait_for_everyone()  # every process has read the same finished ids before anyone writes
    shard = [scan for scan in todo if shard_of(scan.id, num_processes) == process_index]

    writer = FeatureTableWriter(output, schema, process_index=process_index, rows_per_part=rows_per_part)
    loader = DataLoader(
        CTScanDataset(shard, image_processor),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=keep_as_list,
        worker_init_fn=_single_threaded_worker if num_workers > 0 else None,
        pin_memory=torch.device(device).type == "cuda",
    )
    embedded = failed = 0
    bar = None
    if progress and shard:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(shard), unit="scan", desc=f"embed[{process_index}]" if num_processes > 1 else "embed",
                   position=process_index)
    try:
        for items in loader:
            for row in _embed_batch(encoder, items, device, torch_dtype):
                writer.add(row)
                if row["status"] == STATUS_OK:
                    embedded += 1
                else:
                    failed += 1
                    logger.warning("scan %s failed: %s", row["id"], row["error"])
            if bar is not None:
                bar.update(len(items))
        writer.flush()
    finally:
        if bar is not None:
            bar.close()
    if state is not None:
        state.wait_for_everyone()
    if process_index == 0:
        writer.finish()
    if state is not None:
        state.wait_for_everyone()
    return EmbeddingSummary(
        output=str(output),
        total=len(scans),
        skipped=skipped,
        embedded=embedded,
        failed=failed,
        seconds=time.perf_counter() - started,
        feature_size=feature_size,
    )


def _embed_batch(encoder, items, device, dtype):
    """Rows for one DataLoader batch; a batch the model cannot run is retried scan by scan."""
    import torch

    rows = [_failed_row(item["id"], item["error"]) for item in items if item["error"] is not None]
    ready = [item for item in items if item["error"] is None]
    if not ready:
        return rows
    groups = [ready]
    if len({item["pixel_values"].shape for item in ready}) > 1:
        groups = [[item] for item in ready]
    for group in groups:
        try:
            features = _encode(encoder, group, device, dtype)
        except Exception as error:
            if len(group) == 1:
                rows.append(_failed_row(group[0]["id"], describe_error(error)))
                continue
            for item in group:
                try:
                    features_one = _encode(encoder, [item], device, dtype)
                    rows.append(_ok_row(item, features_one[0]))
                except Exception as single_error:
                    rows.append(_failed_row(item["id"], describe_error(single_error)))
            continue
        rows.extend(_ok_row(item, feature) for item, feature in zip(group, features))
    return rows


def _encode(encoder, items, device, dtype):
    import torch

    pixel_values = torch.from_numpy(np.stack([item["pixel_values"] for item in items]))
    pixel_values = pixel_values.to(device=device, dtype=dtype, non_blocking=True)
    with torch.inference_mode():
        pooled = encoder(pixel_values=pixel_values, return_dict=True).pooler_output
    features = pooled.float().cpu().numpy()
    if not np.isfinite(features).all():
        raise FloatingPointError("the encoder produced NaN or infinite features")
    return features


def _ok_row(item, feature):
    return {
        "id": item["id"],
        "status": STATUS_OK,
        "error": None,
        "feature": feature.astype(np.float32).tolist(),
        "crop_bbox": item["crop_bbox"],
        "spacing": item["spacing"],
        "shape": item["shape"],
    }


def _failed_row(scan_id, error):
    return {"id": scan_id, "status": STATUS_FAILED, "error": error, "feature": None, "crop_bbox": None,
            "spacing": None, "shape": None}


def read_feature_table(path):
    """The feature table as a pandas DataFrame plus its metadata (model, feature size, image processor)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table.to_pandas(), table_metadata(table)


__all__ = [
    "ScanInput",
    "EmbeddingSummary",
    "EmbeddingInputError",
    "DuplicateScanIdError",
    "NotALuCaFoundModelError",
    "FeatureTableMismatchError",
    "collect_scan_inputs",
    "embed_ct_scans",
    "load_ct_encoder",
    "load_image_processor",
    "merge_feature_tables",
    "read_feature_table",
]
