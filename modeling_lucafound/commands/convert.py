"""`lucafound convert`: the released torchvision-format checkpoint -> a Hub-ready LuCaFoundVisionModel folder."""


def register(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="convert the released model.pt (torchvision swin3d state dict) into a transformers folder",
        description=(
            "Read the released LuCaFound checkpoint (torchvision swin3d_b state dict without head.*) with "
            "torch.load(weights_only=True) or safetensors, check that every key matches, and write a folder that "
            "AutoModel.from_pretrained(DIR, trust_remote_code=True) loads as a LuCaFoundVisionModel."
        ),
    )
    parser.add_argument("--checkpoint", required=True, help="model.pt / .pth / .safetensors")
    parser.add_argument("--output-dir", required=True, help="folder to write (config.json, model.safetensors, code)")
    parser.add_argument("--window-size", type=int, nargs=3, default=[8, 7, 7], metavar=("D", "H", "W"),
                        help="attention window the checkpoint was trained with (default: 8 7 7, Swin3D)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.set_defaults(func=run)
    return parser


def run(args):
    from ..conversion import convert_torchvision_checkpoint

    output_dir = convert_torchvision_checkpoint(
        args.checkpoint, args.output_dir, window_size=tuple(args.window_size), overwrite=args.overwrite
    )
    print(f"wrote {output_dir}: load with AutoModel.from_pretrained({str(output_dir)!r}, trust_remote_code=True)")
    return 0
