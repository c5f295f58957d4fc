"""Package metadata for LuCaFound: the `modeling_lucafound` library, dataset builders, training scripts, CLI."""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


class BuildWithModelCard(build_py):
    """Ship the top-level model_card.md template inside the package, for non-editable installs."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "modeling_lucafound" / "model_card.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((ROOT / "model_card.md").read_text(encoding="utf-8"), encoding="utf-8")

CORE = [
    # torch: on CPU machines install with `-c constraints-cpu.txt` (torch==2.13.0, the CPU build on disk).
    "torch>=2.4",
    "transformers>=5.0,<6",
    "huggingface_hub>=1.0",
    "safetensors>=0.4",
    "tokenizers>=0.20",
    "numpy>=1.24",
    "SimpleITK>=2.3",
    "pydicom>=3.0",
    "nibabel>=5.0",
    "scipy>=1.10",
    "tqdm>=4.60",
    "pyyaml>=6.0",
]
DATA = ["datasets>=5.0", "pyarrow>=15", "pandas>=2.0", "pillow>=10", "openpyxl>=3.1"]
TRAIN = [
    "accelerate>=1.0",
    "peft>=0.17",
    "monai>=1.4",
    "evaluate>=0.4",
    "scikit-learn>=1.3",
    "matplotlib>=3.7",
    "tensorboard>=2.14",
    "psutil>=5.9",
]
DEV = ["pytest>=8", "pytest-xdist>=3.5"]

setup(
    name="lucafound",
    version="0.1.0",
    description="LuCaFound: lung-cancer CT vision-language foundation model for the Hugging Face ecosystem",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_lucafound", "modeling_lucafound.*", "datasets_scripts", "datasets_scripts.*", "train", "train.*"]),
    package_data={"train": ["configs/*.yaml"]},
    include_package_data=True,
    install_requires=CORE + DATA + TRAIN,
    extras_require={
        "dev": DEV,
        "lungmask": ["lungmask"],
        "all": DEV,
    },
    cmdclass={"build_py": BuildWithModelCard},
    entry_points={"console_scripts": ["lucafound=modeling_lucafound.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
