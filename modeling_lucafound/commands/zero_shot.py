"""`lucafound zero-shot VOLUME --model DIR --labels ...`: zero-shot probabilities of text labels for one CT."""

import argparse


def register(subparsers):
    parser = subparsers.add_parser(
        "zero-shot",
        help="score a CT against text labels with a pretrained dual encoder (prompt ensembles, no training)",
        description=(
            "Zero-shot classification: each label is described by several report sentences saying it is present "
            "and several saying it is absent; their averaged text embeddings are compared with the CT embedding. "
            "Prints JSON {label: probability}."
        ),
    )
    parser.add_argument("volume", metavar="VOLUME", help="CT: DICOM series folder, .nii/.nii.gz, .nrrd or .mhd")
    parser.add_argument("--model", required=True, help="folder of a pretrained LuCaFoundModel saved with its processor")
    parser.add_argument(
        "--labels", nargs="+", required=True, metavar="LABEL", help="findings or classes, e.g. 'pleural effusion'"
    )
    parser.add_argument(
        "--exclusive",
        action="store_true",
        help="the labels are alternatives (one softmax over them) instead of independent present/absent findings",
    )
    parser.add_argument(
        "--positive-template",
        action="append",
        metavar="TEMPLATE",
        help="replace the built-in present-prompts (repeatable); must contain {label}",
    )
    parser.add_argument(
        "--negative-template",
        action="append",
        metavar="TEMPLATE",
        help="replace the built-in absent-prompts (repeatable); must contain {label}",
    )
    parser.add_argument("--series-uid", help="series to read when a DICOM folder holds several")
    parser.add_argument("--output", help="also write the JSON result to this file (written atomically)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import tempfile
    from pathlib import Path

    from ..zero_shot import NEGATIVE_TEMPLATES, POSITIVE_TEMPLATES, ZeroShotClassifier, ZeroShotModelError

    classifier = ZeroShotClassifier.from_pretrained(
        args.model,
        positive_templates=args.positive_template or POSITIVE_TEMPLATES,
        negative_templates=args.negative_template or NEGATIVE_TEMPLATES,
    )
    if classifier.image_processor is None:
        raise ZeroShotModelError(
            f"{args.model} has no image processor configuration: save the LuCaFoundProcessor next to the model so "
            "CT volumes are preprocessed exactly as in pretraining"
        )
    probabilities = classifier.classify(
        images=args.volume, labels=args.labels, exclusive=args.exclusive, series_uid=args.series_uid
    )[0]
    result = {
        "volume": str(args.volume),
        "model": str(args.model),
        "mode": "exclusive" if args.exclusive else "independent",
        "probabilities": probabilities,
    }
    text = json.dumps(result, indent=2)
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text + "\n")
            os.replace(temporary, output)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
    print(text)
    return 0
