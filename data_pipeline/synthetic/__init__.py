"""Synthetic MARS: a complete MARS-layout tree of rendered walking people, for tests and demos.

    python -m data_pipeline.synthetic --root=/tmp/synmars [--ids 32] [--test-ids 32] [--seed 0]
        [--height 256 --width 128] [--max-len 150] [--workers N] [--force]

    from data_pipeline import synthetic
    summary = synthetic.ensure('/tmp/synmars', height=128, width=64)   # generate if absent

The tree is exactly what `data_pipeline.datasets.mars` reads from the real MARS, so it exercises
the same code path:
```
<root>/bbox_train/<pid4>/<pid4>C<cam>T<tracklet4>F<frame3>.jpg
<root>/bbox_test/<pid4 | 0000 | 00-1>/...      0000 = distractor, 00-1 = junk tracklets
<root>/info/{train_name.txt, test_name.txt}
<root>/info/tracks_train_info.mat  'track_train_info' int32 N×4 (start, end 1-based; pid; cam)
<root>/info/tracks_test_info.mat   'track_test_info'
<root>/info/query_IDX.mat          'query_IDX' uint16 1×K, 1-based rows of track_test_info
<root>/info/.synthetic_complete    JSON of the parameters, written LAST
```

What makes it a fair (small) re-ID task rather than a colour-lookup one:
- identity: top and bottom colours from one shared palette (many ids share colours), a top
  pattern (plain, horizontal/vertical stripes, checks, chest logo), sleeves, shorts or trousers,
  body height/width/head size, skin and hair colour and length, shoes, an optional bag;
- camera (shared by train and test): illumination gain, colour cast, gamma, vertical light
  gradient, blur, sensor noise, resolution loss, person scale and a textured background (wall
  and floor), which covers most of the crop so that the mean colour of a tracklet says more
  about its camera than about its identity;
- tracklet: facing front or back (logo/backpack visible or not), walking phase and speed (leg
  and arm swing), horizontal drift and jitter, vertical bob, a small brightness change, and for
  some tracklets an occluder (pole, box in front of the legs, or a passer-by);
- MARS-like statistics: long-tailed tracklet lengths (mostly 8-60 frames, a few up to
  `max_len`), every test id in >= 2 cameras, junk (-1) and distractor (0) tracklets in the test
  split, and one query per (id, camera) pair where that leaves every query a gallery match in
  another camera.

Everything is a function of `seed`: numpy Generators are seeded per (id), (camera) and
(id, camera, tracklet), and PIL's JPEG encoder is deterministic, so the same arguments give the
same bytes, however many processes render them (`workers`: by default the usable CPUs, one
per 4000 frames, at most 8; helpers stop when the generating process dies). Generation writes `.synthetic_in_progress` in the root first and
`info/.synthetic_complete` last; `ensure` regenerates a tree whose completion marker is missing
or whose parameters differ, and refuses to touch a directory that holds a MARS-like tree it did
not write. Local directories only.

Modules (one job each): `planning` (SyntheticConfig, which tracklets exist, the queries),
`appearance` (identity, camera and motion models), `render` (painter, person, frames), `writer`
(the MARS files, markers, generate / ensure) and `cli` (`python -m data_pipeline.synthetic`).
Bad arguments raise grl_jax.errors classes (ConfigError, WorkdirError) with one-line messages.
"""
from __future__ import annotations

from data_pipeline.synthetic.appearance import camera_model, identity_appearance, tracklet_motion
from data_pipeline.synthetic.cli import main
from data_pipeline.synthetic.planning import SyntheticConfig, Tracklet, plan
from data_pipeline.synthetic.render import render_person, render_tracklet
from data_pipeline.synthetic.writer import (COMPLETE_MARKER, FORMAT_VERSION, PROGRESS_MARKER,
                                            ForeignRootError, ensure, generate)

__all__ = [
    'COMPLETE_MARKER', 'FORMAT_VERSION', 'PROGRESS_MARKER', 'ForeignRootError', 'SyntheticConfig',
    'Tracklet', 'camera_model', 'ensure', 'generate', 'identity_appearance', 'main', 'plan',
    'render_person', 'render_tracklet', 'tracklet_motion',
]
