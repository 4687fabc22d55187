"""Config mistakes caught before anything is built, with messages that say what to write.

detectron2 reports an unknown key as ``KeyError: 'Non-existent config key: MODEL.HC.LEVLE'`` and
an unknown backbone deep inside the model constructor; ``merge_config_file`` /
``merge_config_list`` add the nearest existing keys to the first, name a missing ``_BASE_`` file
and the config that includes it, and take an integer for a float key (``SOLVER.BASE_LR 1``, which
yacs refuses); ``validate_config`` checks the names and values that would otherwise fail late
(or, for NUM_CLASSES, not at all).
"""
import ast
import difflib
import os
import re
from typing import Any, Iterator, List, Optional, Sequence

import yaml
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "ConfigError",
    "UnknownConfigKeyError",
    "merge_config_file",
    "merge_config_list",
    "nearest_keys",
    "validate_config",
]

# yacs: "Non-existent config key: A.B" (merge_from_file), "Non-existent key: A.B" (merge_from_list)
_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: ([\w.]+)")
# yacs: an int given for a float key
_INT_FOR_FLOAT = re.compile(r"Type mismatch \(<class 'float'> vs\. <class 'int'>\)")


class ConfigError(ValueError):
    """One or more config values that cannot work; the message lists every one of them."""


class UnknownConfigKeyError(KeyError):
    """A config key that does not exist; the message suggests the nearest existing ones."""

    def __str__(self) -> str:  # KeyError would print the message as a quoted repr
        return str(self.args[0])


def _all_keys(cfg: CfgNode, prefix: str = "") -> Iterator[str]:
    for name, value in cfg.items():
        if isinstance(value, CfgNode):
            yield from _all_keys(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def nearest_keys(cfg: CfgNode, key: str, n: int = 3) -> List[str]:
    """Existing keys of ``cfg`` that look most like ``key`` (typos, wrong or missing group)."""
    keys = list(_all_keys(cfg))
    close = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    if close:
        return close
    # the right name in the wrong group, e.g. MODEL.LEVEL for MODEL.HC.LEVEL
    leaf = key.rsplit(".", 1)[-1]
    leaves = difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in keys], n=n, cutoff=0.8)
    return [k for k in keys if k.rsplit(".", 1)[-1] in leaves][:n]


def _unknown_key_error(cfg: CfgNode, error: Exception, source: str) -> Exception:
    match = _UNKNOWN_KEY.search(str(error))
    if match is None:
        return error
    key = match.group(1)
    suggestions = nearest_keys(cfg, key)
    hint = f"did you mean {' or '.join(suggestions)}?" if suggestions else "no similar key exists."
    return UnknownConfigKeyError(f"Unknown config key {key} (in {source}): {hint}")


def _check_bases(path: str, included_by: Sequence[str] = ()) -> None:
    """Raise a FileNotFoundError naming a ``_BASE_`` of ``path`` (or of its bases) that does not
    exist, the file that names it and the chain of includes; detectron2 would report only the
    missing path. Files yaml cannot read safely are left to detectron2."""
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return
    bases = loaded.get("_BASE_") if isinstance(loaded, dict) else None
    for base in bases if isinstance(bases, list) else [bases] if bases else []:
        # resolved as fvcore does: relative to the file that names it; URLs (and values that
        # are no path at all) are left to detectron2
        if not isinstance(base, str) or base.startswith(("https://", "http://")):
            continue
        resolved = os.path.expanduser(base) if base.startswith("~") else base
        if not resolved.startswith("/"):
            resolved = os.path.join(os.path.dirname(path), resolved)
        chain = [*included_by, path]
        if not os.path.isfile(resolved):
            raise FileNotFoundError(
                f"_BASE_ {base!r} of {path} does not exist (no file {os.path.normpath(resolved)}; a "
                "_BASE_ is relative to the file that names it)"
                + (f"; included as {' > '.join(chain)}" if included_by else "")
            )
        if os.path.realpath(resolved) in {os.path.realpath(p) for p in chain}:
            raise ConfigError(f"_BASE_ {base!r} of {path} includes itself: {' > '.join([*chain, resolved])}")
        _check_bases(resolved, chain)


def _value_at(cfg: CfgNode, key: str) -> Optional[Any]:
    """The value of the dotted ``key`` in ``cfg``, or None if there is no such key."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return None
        node = node[part]
    return node


def _ints_as_floats(loaded: dict, cfg: CfgNode) -> None:
    """Make the ints of ``loaded`` (a config file's content) floats where ``cfg`` has a float."""
    for key, value in loaded.items():
        current = cfg.get(key) if isinstance(cfg, CfgNode) else None
        if isinstance(value, dict):
            _ints_as_floats(value, current)
        elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            loaded[key] = float(value)


def merge_config_file(cfg: CfgNode, path: str) -> None:
    """``cfg.merge_from_file(path)`` with clear errors for a missing file, a missing ``_BASE_`` or an
    unknown key, and integers taken for float keys."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    _check_bases(path)
    try:
        cfg.merge_from_file(path)
    except KeyError as e:
        raise _unknown_key_error(cfg, e, f"{path} or a _BASE_ file it includes") from None
    except ValueError as e:
        if not _INT_FOR_FLOAT.search(str(e)):
            raise
        loaded = cfg.load_yaml_with_base(path, allow_unsafe=True)
        if loaded.get("VERSION", cfg.VERSION) != cfg.VERSION:
            raise  # detectron2 upgrades the configs of older versions: not retried here
        _ints_as_floats(loaded, cfg)
        cfg.merge_from_other_cfg(type(cfg)(loaded))


def _int_as_float(cfg: CfgNode, key: str, value: Any) -> Any:
    """``value`` (a command-line string or a value) as a float if it is an int for a float key."""
    if not isinstance(_value_at(cfg, key), float):
        return value
    decoded = value
    if isinstance(value, str):
        try:
            decoded = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return float(decoded) if isinstance(decoded, int) and not isinstance(decoded, bool) else value


def merge_config_list(cfg: CfgNode, opts: Sequence[str]) -> None:
    """``cfg.merge_from_list(opts)`` with clear errors for an unknown key or an odd list, and
    integers taken for float keys."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(
            f"config overrides come in KEY VALUE pairs; got {len(opts)} items, the last "
            f"({opts[-1]!r}) has no value"
        )
    for i in range(0, len(opts), 2):
        opts[i + 1] = _int_as_float(cfg, opts[i], opts[i + 1])
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as e:  # yacs asserts on unknown keys in lists
        raise _unknown_key_error(cfg, e, "the command-line overrides") from None


def _check_registered(problems: List[str], key: str, value: str, registry) -> None:
    if value not in registry:
        problems.append(f"{key}={value!r} is not registered; registered: {sorted(name for name, _ in registry)}")


def _expected_num_classes(dataset_name: str):
    """(classes of the dataset, the metadata field they come from), or None when unknown.

    Panoptic and semantic datasets list every class in ``stuff_classes`` (things included,
    Mask2Former convention); instance datasets only have ``thing_classes``.
    """
    metadata = MetadataCatalog.get(dataset_name)
    for field in ("stuff_classes", "thing_classes"):
        classes = metadata.get(field, None)
        if classes:
            return len(classes), field
    return None


def _resolve_num_classes(cfg: CfgNode) -> List[str]:
    """MODEL.SEM_SEG_HEAD.NUM_CLASSES -1 becomes the number of classes of the DATASETS.TRAIN
    datasets (all must agree); returns the line to log. Unregistered names are left to
    ``validate_config`` to report."""
    head = cfg.MODEL.SEM_SEG_HEAD
    if head.NUM_CLASSES != -1:
        return []
    if not cfg.DATASETS.TRAIN:
        raise ConfigError(
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES -1 takes the number of classes from DATASETS.TRAIN, "
            "which is empty; set the number or a training dataset"
        )
    counts = {}
    for name in cfg.DATASETS.TRAIN:
        if name in DatasetCatalog:
            counts[name] = _expected_num_classes(name)
            if counts[name] is None:
                raise ConfigError(
                    f"MODEL.SEM_SEG_HEAD.NUM_CLASSES -1: dataset {name!r} names no classes in its "
                    "metadata (stuff_classes or thing_classes); set the number"
                )
    if len({count for count, _ in counts.values()}) > 1:
        found = ", ".join(f"{name!r}: {count}" for name, (count, _) in counts.items())
        raise ConfigError(
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES -1: the DATASETS.TRAIN datasets have different "
            f"numbers of classes ({found}); one model needs one class list"
        )
    if not counts:
        return []
    num_classes, field = next(iter(counts.values()))
    head.NUM_CLASSES = num_classes
    return [
        f"MODEL.SEM_SEG_HEAD.NUM_CLASSES -1: {num_classes} classes, from the training dataset(s) "
        f"{list(counts)} (len(metadata.{field}))"
    ]


def validate_config(cfg: CfgNode) -> List[str]:
    """Register the datasets of DATASETS.COCO_INSTANCES / COCO_PANOPTIC / SEM_SEG (see
    :mod:`hcformer.data.datasets.register_from_config`) and resolve MODEL.SEM_SEG_HEAD.NUM_CLASSES
    -1 (in place); return lines for the caller to log once its loggers are set up.

    Then check what detectron2 checks late or never; raise one ``ConfigError`` listing every
    problem found:

    - META_ARCHITECTURE, BACKBONE.NAME, SEM_SEG_HEAD.NAME, the transformer decoder and the
      dataset mapper are registered names (the message lists the registered ones);
    - MODEL.HC.LEVEL is 0..3, INPUT.FORMAT is RGB or BGR and INPUT.MAX_IMAGE_PIXELS positive;
    - the DATASETS are registered, and MODEL.SEM_SEG_HEAD.NUM_CLASSES equals the number of
      classes in their metadata.
    """
    # imported here: they register the names checked below
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY

    import hcformer.modeling  # noqa: F401
    from hcformer.data.build import check_mapper_name
    from hcformer.data.datasets.register_from_config import register_datasets_from_config
    from hcformer.data.image_reading import check_image_format
    from hcformer.modeling.backbone.clustered_downsampling import check_level
    from hcformer.modeling.head.hc_transformer_decoder import TRANSFORMER_DECODER_REGISTRY

    register_datasets_from_config(cfg)  # in every process, before any loader is built
    notes = _resolve_num_classes(cfg)

    problems: List[str] = []
    model = cfg.MODEL
    _check_registered(problems, "MODEL.META_ARCHITECTURE", model.META_ARCHITECTURE, META_ARCH_REGISTRY)
    _check_registered(problems, "MODEL.BACKBONE.NAME", model.BACKBONE.NAME, BACKBONE_REGISTRY)
    if model.META_ARCHITECTURE == "HCFormer":
        _check_registered(
            problems, "MODEL.SEM_SEG_HEAD.NAME", model.SEM_SEG_HEAD.NAME, SEM_SEG_HEADS_REGISTRY
        )
        _check_registered(
            problems,
            "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME",
            model.MASK_FORMER.TRANSFORMER_DECODER_NAME,
            TRANSFORMER_DECODER_REGISTRY,
        )
    # the checks of the code that uses these values, run now and reported together
    for check, value in (
        (check_mapper_name, cfg.INPUT.DATASET_MAPPER_NAME),
        (check_level, model.HC.LEVEL),
        (check_image_format, cfg.INPUT.FORMAT),
    ):
        try:
            check(value)
        except ValueError as error:
            problems.append(str(error))
    if cfg.INPUT.MAX_IMAGE_PIXELS <= 0:
        problems.append(f"INPUT.MAX_IMAGE_PIXELS={cfg.INPUT.MAX_IMAGE_PIXELS}: expected > 0")

    registered = list(DatasetCatalog.keys())
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            if name not in registered:
                close = difflib.get_close_matches(name, registered, n=3)
                problems.append(
                    f"DATASETS.{key}: {name!r} is not a registered dataset"
                    + (f"; did you mean {' or '.join(close)}?" if close else "")
                )
                continue
            expected = _expected_num_classes(name)
            num_classes = model.SEM_SEG_HEAD.NUM_CLASSES
            if expected is not None and expected[0] != num_classes:
                problems.append(
                    f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes}, but dataset {name!r} has "
                    f"{expected[0]} classes (len(metadata.{expected[1]}))"
                )
    if problems:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))
    return notes
