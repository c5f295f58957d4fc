"""`lucafound push DIR --repo-id ORG/NAME`: check a saved folder is Hub-ready, then upload it with huggingface_hub.

Checks before anything is sent: config.json with a complete `auto_map` and every remote-code file it names,
weights, a model card (README.md with a YAML header), an image processor; training leftovers (optimizer states,
checkpoints, logs) are never uploaded. `--dry-run` does the checks and lists what would be uploaded, offline.
"""

import json
import re
from pathlib import Path

from ..errors import LuCaFoundInputError

# Never uploaded: training state and scratch files.
IGNORE_PATTERNS = ["checkpoints/*", "*.incomplete*", "optimizer.bin", "optimizer.pt", "scheduler.pt", "rng_state*",
                   "random_states_*", "*.tmp", ".*", "__pycache__/*", "runs/*", "*.log"]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubFolderError(LuCaFoundInputError):
    """A folder that is not ready to publish (missing config, weights, remote code, model card...)."""


def _is_ignored(relative):
    from fnmatch import fnmatch

    return any(fnmatch(relative, pattern) or fnmatch(Path(relative).name, pattern) for pattern in IGNORE_PATTERNS)


def files_to_upload(folder):
    """Relative paths (sorted) of the files that would be uploaded."""
    folder = Path(folder)
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not _is_ignored(relative):
            files.append(relative)
    return files


def check_hub_folder(folder):
    """Raise HubFolderError listing every problem that would make the published folder fail to load."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubFolderError(f"{str(folder)!r} is not a folder. Pass the folder written by save_pretrained.")
    problems = []
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None
    if config is None:
        problems.append("no config.json (save the model with save_pretrained)")
    else:
        auto_map = config.get("auto_map") or {}
        if "AutoConfig" not in auto_map or "AutoModel" not in auto_map:
            problems.append("config.json auto_map lacks AutoConfig/AutoModel (register_for_auto_class before saving)")
        referenced = set(auto_map.values())
        for pipeline in (config.get("custom_pipelines") or {}).values():
            referenced.add(pipeline.get("impl", ""))
        for reference in sorted(referenced):
            module = str(reference).split(".")[0]
            if module and not (folder / f"{module}.py").is_file():
                problems.append(f"remote code file {module}.py named in config.json is missing")
    if not list(folder.glob("*.safetensors")) and not list(folder.glob("pytorch_model*.bin")):
        problems.append("no weights (model.safetensors)")
    if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        problems.append("no image processor (preprocessor_config.json): users could not preprocess CTs as in training")
    readme = folder / "README.md"
    if not readme.is_file():
        problems.append(f"no model card README.md (write one with `lucafound model-card {folder}`)")
    elif not readme.read_text(encoding="utf-8").startswith("---\n"):
        problems.append("README.md has no YAML header (the Hub reads license, tags and pipeline_tag from it)")
    if problems:
        raise HubFolderError(f"{str(folder)!r} is not ready to publish: " + "; ".join(problems) + ".")


def push_folder(folder, repo_id, private=False, revision=None, commit_message=None, token=None, dry_run=False,
                api=None):
    """Check `folder`, then create `repo_id` (if needed) and upload it; with `dry_run` only check and list.

    Returns {"repo_id", "files", "bytes", "dry_run", "url"}.
    """
    if not REPO_ID.match(repo_id or ""):
        raise HubFolderError(f"--repo-id must look like ORG/NAME (e.g. my-lab/lucafound-base), got {repo_id!r}.")
    folder = Path(folder)
    check_hub_folder(folder)
    files = files_to_upload(folder)
    result = {
        "repo_id": repo_id,
        "files": files,
        "bytes": sum((folder / name).stat().st_size for name in files),
        "dry_run": dry_run,
        "url": None,
    }
    if dry_run:
        return result
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        commit_message=commit_message or "Upload LuCaFound model",
        ignore_patterns=IGNORE_PATTERNS,
    )
    result["url"] = getattr(commit, "commit_url", None) or str(commit)
    return result


def register(subparsers):
    parser = subparsers.add_parser(
        "push",
        help="check a saved model folder and upload it to the Hugging Face Hub (--dry-run: check and list only)",
        description=__doc__,
    )
    parser.add_argument("folder", metavar="DIR", help="saved LuCaFound model folder (with README.md model card)")
    parser.add_argument("--repo-id", required=True, help="Hub repository, ORG/NAME")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to (default: main)")
    parser.add_argument("--commit-message", help="commit message")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`)")
    parser.add_argument("--dry-run", action="store_true", help="only check the folder and list what would be uploaded")
    parser.set_defaults(func=run)


def run(args):
    result = push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision,
                         commit_message=args.commit_message, token=args.token, dry_run=args.dry_run)
    verb = "would upload" if result["dry_run"] else "uploaded"
    print(f"{verb} {len(result['files'])} files ({result['bytes'] / 1e6:.1f} MB) to {result['repo_id']}")
    for name in result["files"]:
        print(f"  {name}")
    if result["url"]:
        print(result["url"])
    return 0
