"""Evaluation of a model's variables on the query / gallery splits.

* `features.py`: per-tracklet descriptors (every test clip through the jitted eval step,
  averaged per tracklet), query / gallery features computed once.
* `reid.py`: CMC / mAP / mINP under the dataset's protocol (grl_jax/evaluation/), the
  results table and the scalar metrics that go to logs and checkpoints.
* `ranked_list.py`: the ranked-list picture of a few queries.
"""
