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

Readers read index files and directory listings only, never images, through `tf.io.gfile`, so
roots may be local directories or gs:// URLs. Every bad input raises `DatasetError` (a
ValueError) naming the file and what was expected.
"""
from __future__ import annotations

import importlib

from data_pipeline.datasets.common import PROTOCOLS, DatasetError
from data_pipeline.index import Dataset

NAMES = ('mars', 'duke', 'ilids', 'prid', 'lsvid', 'custom')

__all__ = ['NAMES', 'PROTOCOLS', 'DatasetError', 'load']


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
  if name not in NAMES:
    raise DatasetError(f'unknown dataset {name!r}; expected one of {NAMES}')
  module = importlib.import_module(f'data_pipeline.datasets.{name}')
  return module.load(root, protocol=protocol, split_id=split_id, verify=verify)
