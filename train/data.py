"""Training data for LuCaFound: builder splits by short name, CT transforms (deterministic + MONAI random),
per-process sharding, a resumable shuffling sampler and the collate function shared by pretraining and fine-tuning.

Typical use::

    splits = load_dataset_splits("synthetic", num_samples=64, image_size=(16, 64, 64))
    train = add_example_index(splits["train"])
    train = shard_for_process(train, rank, world_size)
    augmentation = CTAugmentation(seed=0)
    set_ct_transforms(train, augmentation)          # random: applied on read, never cached
    set_ct_transforms(splits["validation"])          # deterministic only
    batch = collate_ct_batch([train[0], train[1]], tokenizer=tokenizer)

Augmentations are reproducible: each example's random draw depends only on (seed, epoch, example index), so a
resumed run, any number of DataLoader workers and any number of processes see the same augmented volumes.
"""

import numpy as np
import torch

from modeling_lucafound.errors import LuCaFoundInputError

PIXEL_VALUES = "pixel_values"
EXAMPLE_INDEX = "example_index"
TEXT_COLUMN_CANDIDATES = ("report", "text")


class DatasetOptionError(LuCaFoundInputError):
    """A dataset option (config name, builder field, text column) that the chosen builder does not offer."""


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def load_dataset_splits(name, data_dir=None, num_samples=None, image_size=None, seed=42, cache_dir=None,
                        config_name="preprocessed", num_proc=None, **config_overrides):
    """Build (or reuse from the cache) a `datasets_scripts` builder by short name and return its `DatasetDict`.

    `name` is a short name such as `synthetic` or `nsclc-radiomics` (or a builder class name). `num_samples` is
    passed only to builders that have it (the synthetic cohort); `image_size` (depth, height, width) sets the
    size of the stored `pixel_values`; other builder-config fields go through `config_overrides`. `num_proc`
    builds the dataset in that many processes (each takes a share of the patients); the cached result is the same.
    """
    import datasets

    from datasets_scripts import get_builder_class

    builder_class = get_builder_class(name)
    config_names = [config.name for config in getattr(builder_class, "BUILDER_CONFIGS", [])]
    if config_names and config_name not in config_names:
        raise DatasetOptionError(
            f"dataset {name!r} has no config {config_name!r}; choose one of {config_names}"
        )
    # Lists (from YAML or JSON) become tuples, so equal options share one datasets cache entry.
    options = {key: tuple(value) if isinstance(value, list) else value for key, value in config_overrides.items()}
    options["seed"] = int(seed)
    if image_size is not None:
        options["image_size"] = tuple(int(size) for size in image_size)
    if num_samples is not None:
        options["num_samples"] = int(num_samples)
    try:
        builder = builder_class(config_name=config_name, data_dir=data_dir, cache_dir=cache_dir, **options)
    except ValueError as error:
        if isinstance(error, LuCaFoundInputError):
            raise
        raise DatasetOptionError(
            f"dataset {name!r} does not accept the options {sorted(options)}: {error}. `num_samples` applies only to "
            "the synthetic cohort."
        ) from error
    builder.download_and_prepare(num_proc=num_proc)
    splits = builder.as_dataset()
    if not isinstance(splits, datasets.DatasetDict):
        splits = datasets.DatasetDict(splits)
    return splits


def report_column(dataset, text_column=None):
    """The name of the column holding report text: `text_column` if given, else `report` or `text`."""
    columns = dataset.column_names
    if text_column is not None:
        if text_column not in columns:
            raise DatasetOptionError(f"text column {text_column!r} not in the dataset; columns: {columns}")
        return text_column
    for candidate in TEXT_COLUMN_CANDIDATES:
        if candidate in columns:
            return candidate
    raise DatasetOptionError(
        f"no report text in the dataset (looked for {list(TEXT_COLUMN_CANDIDATES)}; columns: {columns}). "
        "Contrastive pretraining needs CT-report pairs: pick a dataset with reports, or pass clinical_text=True "
        "to builders that can write a structured text from clinical fields."
    )


def add_example_index(dataset):
    """Add an `example_index` column (0..N-1), the key of each example's augmentation draw.

    Call it before sharding so the index is global. `add_column` does not rewrite the stored volumes.
    """
    if EXAMPLE_INDEX in dataset.column_names:
        return dataset
    return dataset.add_column(EXAMPLE_INDEX, list(range(len(dataset))))


def shard_for_process(dataset, rank, world_size):
    """This process's contiguous share of `dataset` (`datasets.distributed.split_dataset_by_node`)."""
    if world_size <= 1:
        return dataset
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(dataset, rank=rank, world_size=world_size)


# --------------------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------------------


def volume_to_channels_first(pixel_values):
    """Deterministic step: a stored (D, H, W) float16 volume (array or nested lists) -> float32 (1, D, H, W)."""
    volume = np.asarray(pixel_values, dtype=np.float32)
    if volume.ndim == 3:
        volume = volume[None]
    if volume.ndim != 4:
        raise ValueError(f"pixel_values must be (D, H, W) or (C, D, H, W), got shape {volume.shape}")
    return volume


class CTAugmentation:
    """MONAI random transforms for lung-cropped CT volumes in [0, 1], channel first (1, D, H, W).

    Small affine (rotation, scaling, translation), intensity scale and shift, optional flips, then clipping back
    to [0, 1]. Flips are off by default for CT-report pairs: reports name the side and lobe ("left upper lobe"),
    and a mirrored volume would contradict its report; turn them on for laterality-free labels (histology).
    Every draw is seeded from (seed, epoch, example index), so augmentation is reproducible and resumable.
    """

    def __init__(self, seed=0, flip_probability=0.0, flip_axes=(0, 1, 2), affine_probability=0.5,
                 rotation_radians=0.1, scale_fraction=0.05, translation_voxels=(1, 4, 4), intensity_probability=0.5,
                 intensity_scale=0.05, intensity_shift=0.02):
        self.seed = int(seed)
        self.epoch = 0
        self.options = dict(
            flip_probability=float(flip_probability), flip_axes=tuple(flip_axes),
            affine_probability=float(affine_probability), rotation_radians=float(rotation_radians),
            scale_fraction=float(scale_fraction), translation_voxels=tuple(translation_voxels),
            intensity_probability=float(intensity_probability), intensity_scale=float(intensity_scale),
            intensity_shift=float(intensity_shift),
        )
        self._transforms = None

    def set_epoch(self, epoch):
        """Change the draws for a new pass over the data (call before building the epoch's DataLoader iterator)."""
        self.epoch = int(epoch)

    def build_transforms(self):
        """The MONAI `Compose` of random array transforms (built lazily so the object pickles cheaply)."""
        from monai.transforms import Compose, RandAffine, RandFlip, RandScaleIntensity, RandShiftIntensity

        options = self.options
        transforms = [RandFlip(prob=options["flip_probability"], spatial_axis=axis) for axis in options["flip_axes"]]
        transforms.append(
            RandAffine(
                prob=options["affine_probability"],
                rotate_range=(options["rotation_radians"],) * 3,
                scale_range=(options["scale_fraction"],) * 3,
                translate_range=options["translation_voxels"],
                padding_mode="border",
                mode="bilinear",
            )
        )
        transforms.append(RandScaleIntensity(factors=options["intensity_scale"], prob=options["intensity_probability"]))
        transforms.append(RandShiftIntensity(offsets=options["intensity_shift"], prob=options["intensity_probability"]))
        return Compose(transforms)

    def example_seed(self, example_index):
        return int(np.random.SeedSequence([self.seed, self.epoch, int(example_index)]).generate_state(1)[0])

    def __call__(self, volume, example_index):
        """Augment one float32 (1, D, H, W) volume; the result is float32 in [0, 1] with the same shape."""
        if self._transforms is None:
            self._transforms = self.build_transforms()
        self._transforms.set_random_state(seed=self.example_seed(example_index))
        augmented = np.asarray(self._transforms(volume), dtype=np.float32)
        return np.clip(augmented, 0.0, 1.0)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_transforms"] = None
        return state


class CTBatchTransform:
    """The `set_transform` function: the deterministic step for every example, then the random one if any."""

    def __init__(self, augmentation=None):
        self.augmentation = augmentation

    def __call__(self, batch):
        volumes = [volume_to_channels_first(volume) for volume in batch[PIXEL_VALUES]]
        if self.augmentation is not None:
            if EXAMPLE_INDEX not in batch:
                raise DatasetOptionError(
                    "random augmentation needs the `example_index` column: call add_example_index(dataset) first"
                )
            volumes = [self.augmentation(volume, index) for volume, index in zip(volumes, batch[EXAMPLE_INDEX])]
        batch = dict(batch)
        batch[PIXEL_VALUES] = volumes
        return batch


def set_ct_transforms(dataset, augmentation=None):
    """Apply the CT transforms on read (`set_transform`): deterministic always, `augmentation` when given.

    Random transforms are never applied with `map`, which would cache one draw forever.
    """
    dataset.set_transform(CTBatchTransform(augmentation))
    return dataset


# --------------------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------------------


def collate_ct_batch(examples, tokenizer=None, text_column=None, max_length=None, label_columns=()):
    """Stack examples into model inputs: `pixel_values` (B, 1, D, H, W) float32, tokenised reports, labels.

    With a `tokenizer`, the report text (`text_column`, else `report`/`text`) becomes `input_ids` and
    `attention_mask` padded to the longest report (truncated at `max_length`). Each of `label_columns` becomes
    a tensor under its own name (integers -> int64, others -> float32).
    """
    if not examples:
        raise ValueError("collate_ct_batch got an empty list of examples")
    volumes = [volume_to_channels_first(example[PIXEL_VALUES]) for example in examples]
    shapes = {volume.shape for volume in volumes}
    if len(shapes) != 1:
        raise LuCaFoundInputError(
            f"volumes in one batch have different shapes {sorted(shapes)}; build the dataset with one image_size"
        )
    batch = {PIXEL_VALUES: torch.from_numpy(np.stack(volumes))}
    if tokenizer is not None:
        column = text_column
        if column is None:
            column = next((name for name in TEXT_COLUMN_CANDIDATES if name in examples[0]), None)
        if column is None or column not in examples[0]:
            raise DatasetOptionError(f"no report text column in the examples (keys: {sorted(examples[0])})")
        encoded = tokenizer(
            [example[column] for example in examples],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        batch["input_ids"] = encoded["input_ids"]
        batch["attention_mask"] = encoded["attention_mask"]
    for column in label_columns:
        values = [example[column] for example in examples]
        if any(value is None for value in values):
            raise LuCaFoundInputError(f"label column {column!r} has missing values; filter those examples first")
        dtype = torch.long if all(isinstance(value, (int, np.integer, bool)) for value in values) else torch.float32
        batch[column] = torch.tensor(values, dtype=dtype)
    return batch


class EpochShuffleSampler(torch.utils.data.Sampler):
    """Indices 0..N-1 in an order that depends only on (seed, epoch), starting at `start` (to resume mid-epoch).

    The order comes from its own generator, never from the global RNG, so creating a DataLoader does not
    perturb the dropout/augmentation random state that a checkpoint restores.
    """

    def __init__(self, num_examples, seed=0, epoch=0, start=0, shuffle=True):
        self.num_examples = int(num_examples)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.start = int(start)
        self.shuffle = shuffle

    def order(self):
        if not self.shuffle:
            return list(range(self.num_examples))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_examples, generator=generator).tolist()

    def __iter__(self):
        return iter(self.order()[self.start:])

    def __len__(self):
        return max(0, self.num_examples - self.start)


__all__ = [
    "DatasetOptionError",
    "load_dataset_splits",
    "report_column",
    "add_example_index",
    "shard_for_process",
    "volume_to_channels_first",
    "CTAugmentation",
    "CTBatchTransform",
    "set_ct_transforms",
    "collate_ct_batch",
    "EpochShuffleSampler",
]
