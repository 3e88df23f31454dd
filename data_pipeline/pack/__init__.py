"""Packed tracklet datasets: TFDS directories of ArrayRecord shards, one record per tracklet.

    python -m data_pipeline.pack --dataset=mars --root=/data/MARS --output=gs://b/packs/mars
    # then train / evaluate with --config.data.packed=gs://b/packs/mars

A pod streaming MARS (1.19 M frames) as single JPEG objects spends its time on request latency;
a pack holds the same bytes in a few hundred MB-sized shards that a process reads by record.
Modules: format (layout, completeness and identity checks), writer (pack), reader
(load_dataset, PackedFrames), cli (`python -m data_pipeline.pack`). The training and evaluation
streams read a pack through `PackedFrames` (data_pipeline/pipeline/), with the same (seed,
step) sampling as on loose files, hence byte-identical clips.
"""
from __future__ import annotations

from data_pipeline.pack.format import FORMAT_VERSION
from data_pipeline.pack.format import check
from data_pipeline.pack.format import read_complete
from data_pipeline.pack.reader import PackedFrames
from data_pipeline.pack.reader import load_dataset
from data_pipeline.pack.writer import pack

__all__ = ['FORMAT_VERSION', 'PackedFrames', 'check', 'load_dataset', 'pack', 'read_complete']
