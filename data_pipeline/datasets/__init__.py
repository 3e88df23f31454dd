"""Dataset readers: original on-disk layouts -> `Dataset` of `TrackletIndex` splits.

    from data_pipeline import datasets
    ds = datasets.load('mars', '/data/MARS', protocol='torchreid')
    ds.train, ds.query, ds.gallery          # TrackletIndex each

Readers (one module each; see its docstring for the layout and the protocols):
  mars    MARS (bbox_train/, bbox_test/, info/ from liangzheng06/MARS-evaluation)
  duke    DukeMTMC-VideoReID ({train,query,gallery}/<pid4>/<tracklet4>/*.jpg)
  ilids   iLIDS-VID (i-LIDS-VID/sequences/cam{1,2}/personNNN, 10 splits from ls_set)
  prid    PRID-2011 (prid_2011/multi_shot/cam_{a,b}/person_NNNN, 10 seeded splits)
  lsvid   LS-VID (list_sequence/, tracklet_{train,test}/, test/data/info_test.mat)
  custom  bring-your-own CSV (path,pid,camid,tracklet,split[,frame]); see custom.py

Readers read index files and directory listings only, never images, through the storage layer
(grl_jax/io.py), so roots may be local directories or gs:// URLs. Every bad input raises `DatasetError`
(grl_jax.errors, a ValueError) naming the file and what was expected. Each reader module also
holds `ROOT_HELP`, what its root must contain and where it comes from (`root_help(name)`).
A train split may be empty (evaluation only) where the format can say so: custom, MARS, Duke,
LS-VID and PRID split files; `has_train(ds)` tells.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from data_pipeline.index import Dataset
from grl_jax.errors import DatasetError
from grl_jax.schema import DATASETS, PROTOCOLS

# The reader names, one module each; the same tuple as grl_jax.schema.DATASETS.
NAMES = DATASETS

__all__ = ['NAMES', 'PROTOCOLS', 'DatasetError', 'has_train', 'load', 'root_help']


def _reader(name: str) -> ModuleType:
  if name not in NAMES:
    raise DatasetError(f'unknown dataset {name!r}; expected one of {NAMES}')
  return importlib.import_module(f'data_pipeline.datasets.{name}')


def root_help(name: str) -> str:
  """What the root of dataset `name` must contain and where it comes from (one line).

  Raises:
    DatasetError: unknown name.
  """
  return _reader(name).ROOT_HELP


def has_train(dataset: Dataset) -> bool:
  """Whether `dataset` has training tracklets (False: an evaluation-only dataset)."""
  return len(dataset.train) > 0


def load(name: str, root: str, protocol: str = 'torchreid', split_id: int = 0,
         verify: bool = False) -> Dataset:
  """Reads dataset `name` from `root`.

  Args:
    name: one of NAMES.
    root: the dataset directory (local or gs://); for 'custom', the CSV file or a directory
      holding `dataset.csv`.
    protocol: 'official', 'torchreid' or 'cas' gallery composition (see each reader).
    split_id: which train/test split for iLIDS-VID and PRID-2011 (0..9); must be 0 elsewhere.
    verify: also check that every frame file exists (lists each directory once).

  Returns:
    Dataset with train pids relabelled 0..N-1, original test pids, 0-based camids.

  Raises:
    DatasetError: unknown name or protocol, missing/malformed files, inconsistent annotations.
  """
  return _reader(name).load(root, protocol=protocol, split_id=split_id, verify=verify)
