"""medcurate: a reproducible data-quality, curation and training pipeline for medical images.

Module map. ``pipeline/`` is flat on purpose: the stage ``X`` in ``dvc.yaml`` runs ``stages/X.py``,
which reads params and files and calls ``pipeline/X.py``. Modules are of two kinds, listed below
(``tests/test_contract.py`` checks the lists are complete and that no foundation imports stage
logic, directly or through another module):

* **stage logic**: what one stage (or a helper of one stage) does; may import foundations and other
  stage logic (``label_issues`` trains a CNN auditor with ``train``'s loop).
* **foundations**: shared building blocks with no knowledge of any stage.
"""

__version__ = "0.1.0"

# module -> the stage it implements (a stage's helpers name that stage too)
STAGE_LOGIC = {
    "demo": "demo_data",
    "demo_outliers": "demo_data",
    "demo_dermoscopy": "demo_data",
    "ingest": "ingest",
    "features": "ingest",
    "quality": "quality",
    "dedup": "dedup",
    "hamming_index": "dedup",
    "similarity": "dedup",
    "outliers": "outliers",
    "mirror": "outliers",
    "curate": "curate",
    "split": "split",
    "normalize": "normalize",
    "augment": "augment",
    "label_issues": "label_issues",
    "shortcuts": "shortcuts",
    "accounting": "accounting",
    "truth": "accounting",
    "tune": "tune",
    "train": "train",
    "mixup": "train",
    "evaluate": "evaluate",
    "calibration": "evaluate",
    "subgroups": "evaluate",
    "report": "report",
    "report_text": "report",
    "headline": "headline",
}

# module -> what it provides
FOUNDATIONS = {
    "contract": "the data contract: manifest columns, final states, issue column names, the inclusion rule",
    "errors": "InputError, the one exception for messages meant for users",
    "params": "the typed, validated params.yaml",
    "io": "atomic writes of parquet, CSV, JSON, PNG, text",
    "parallel": "per-image maps over a process pool or a Dask cluster",
    "images": "bounded, safe decoding of every supported image format",
    "sheets": "contact sheets (galleries) of images with captions",
    "graph": "connected components of rows linked by a shared key or by pairs",
    "labels": "label spelling rules (variants of one class) and the two-class minimum",
    "budget": "a per-file time budget for work on untrusted files",
    "processed": "the processed dataset reader and the typed Normalizer",
    "models": "CNN architectures and local pretrained weights",
    "inference": "device choice, model inputs and class probabilities",
    "distributed": "torchrun process groups and unpadded shards",
    "checkpoint": "the typed model checkpoint, loaded with weights_only",
    "live": "dvclive training curves written to files only",
    "workspace": "data that git would commit (inside the work tree, not ignored, not DVC-tracked)",
    "modality": "the data's modality (gray / colour), inferred from the images, and the domain check",
}
