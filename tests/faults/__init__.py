"""Fault-injection suite: each module breaks a run one way and asserts that nothing is lost.

    test_kill_storm.py      SIGKILL at seeded moments of a real demo run, restarted each time
    test_disk_full.py       the disk fills during a checkpoint save
    test_corrupt_data.py    bad frames at 5%, a tracklet folder deleted mid-run, bad index files
    test_signals.py         SIGTERM during an evaluation / a save; a NaN loss at a given step
    test_compat.py          a committed checkpoint of the current format keeps restoring
    test_untrusted.py       pickles in .pth / .npz files are refused and never run

Shared pieces are in helpers.py; `pytest -m faults tests` runs only this suite (the marker is
registered in pyproject.toml).
"""
