"""Tests for grl_jax.visualize: picture size, border colours, ranked lists, file inputs."""
import numpy as np
import pytest
from PIL import Image

from data_pipeline.index import TrackletIndex
from grl_jax import visualize as vis

FS = (16, 8)  # frame (height, width)
N = 3         # frames per tracklet
B = 2         # border


def solid_tracklet(value, t=5):
  return np.full((t, 20, 10, 3), value, np.uint8)


def border_pixel(img, row, column):
  y, x = vis.cell_origin(row, column, N, FS, B)
  return tuple(img[y, x]), tuple(img[y + B + 1, x + B + 1])  # (border, inside)


def test_picture_size_and_border_colours(tmp_path):
  queries = [solid_tracklet(10), solid_tracklet(20)]
  galleries = [[solid_tracklet(100 + i) for i in range(4)], [solid_tracklet(200 + i)
                                                              for i in range(3)]]
  statuses = [['good', 'bad', 'junk', 'bad'], ['bad', 'good', 'good']]
  out = tmp_path / 'sub' / 'ranked.png'
  img = vis.ranked_list_picture(queries, galleries, statuses, out, frames_per_tracklet=N,
                                frame_size=FS, border=B)
  assert out.exists()
  h, w = vis.picture_size(2, 4, N, FS, B)
  # layout formula of the module docstring, written out
  cell_w, cell_h = N * FS[1] + 2 * B, FS[0] + 2 * B
  assert (h, w) == (vis.PAD + 2 * (vis.LABEL_H + cell_h + vis.PAD),
                    vis.PAD + cell_w + vis.QUERY_GAP + 4 * cell_w + 3 * vis.PAD + vis.PAD)
  with Image.open(out) as im:
    assert im.size == (w, h) and im.mode == 'RGB'
    assert np.array_equal(np.asarray(im), img)
  colors = {'good': vis.GOOD_COLOR, 'bad': vis.BAD_COLOR, 'junk': vis.JUNK_COLOR}
  for r, row in enumerate(statuses):
    border, inside = border_pixel(img, r, -1)
    assert border == vis.QUERY_COLOR and inside == (10 * (r + 1),) * 3
    for i, s in enumerate(row):
      border, inside = border_pixel(img, r, i)
      assert border == colors[s], (r, i)
      # the frames are inside the border, at the right place
      assert inside == ((100 if r == 0 else 200) + i,) * 3
  # the missing 4th cell of the second row stays background
  y, x = vis.cell_origin(1, 3, N, FS, B)
  assert tuple(img[y + 3, x + 3]) == vis.BACKGROUND


def test_frames_evenly_spaced():
  # 10 frames of distinct values; 4 picked -> indices 0, 3, 6, 9
  frames = np.stack([np.full((4, 2, 3), 10 * i, np.uint8) for i in range(10)])
  strip = vis.tracklet_strip(frames, 4, (4, 2))
  assert strip.shape == (4, 8, 3)
  assert [int(strip[0, 2 * k, 0]) for k in range(4)] == [0, 30, 60, 90]
  # shorter than requested: frames repeat
  strip = vis.tracklet_strip(frames[:2], 4, (4, 2))
  assert [int(strip[0, 2 * k, 0]) for k in range(4)] == [0, 0, 10, 10]


def test_ranked_list_statuses_and_ranks():
  d = np.array([.1, .2, .3, .4, .5, .6])
  g_pids = np.array([1, -1, 2, 1, 0, 1])
  g_cams = np.array([0, 1, 1, 1, 2, 2])
  # query pid 1 cam 0: g0 junk (same cam); g1 pid -1 (junk only in official)
  idx, st, lab = vis.ranked_list(d, 1, 0, g_pids, g_cams, top_k=4, protocol='torchreid')
  assert idx.tolist() == [0, 1, 2, 3]
  assert st == ['junk', 'bad', 'bad', 'good'] and lab == ['x', '1', '2', '3']
  idx, st, lab = vis.ranked_list(d, 1, 0, g_pids, g_cams, top_k=4, protocol='official')
  assert st == ['junk', 'junk', 'bad', 'good'] and lab == ['x', 'x', '1', '2']
  idx, st, lab = vis.ranked_list(d, 1, 0, g_pids, g_cams, top_k=3, protocol='official',
                                 show_junk=False)
  assert idx.tolist() == [2, 3, 4] and st == ['bad', 'good', 'bad'] and lab == ['1', '2', '3']


def test_from_distances_with_file_paths(tmp_path):
  def write(name, value):
    p = tmp_path / f'{name}.png'
    Image.fromarray(np.full((20, 10, 3), value, np.uint8)).save(p)
    return str(p)

  query = TrackletIndex.from_lists([[write('q0', 50), write('q0b', 50)]], [7], [0])
  g_values = [60, 70, 80]
  gallery = TrackletIndex.from_lists([[write(f'g{i}', v)] for i, v in enumerate(g_values)],
                                     [3, 7, 7], [1, 0, 2])
  distmat = np.array([[.2, .1, .3]], np.float32)
  out = tmp_path / 'ranked.png'
  img = vis.ranked_list_picture_from_distances(distmat, query, gallery, [0], out, top_k=3,
                                               frames_per_tracklet=N, frame_size=FS, border=B)
  assert out.exists() and img.shape[:2] == vis.picture_size(1, 3, N, FS, B)
  # order g1 (pid 7, same camera: junk), g0 (pid 3: wrong), g2 (pid 7, other camera: correct)
  expected = [(vis.JUNK_COLOR, 70), (vis.BAD_COLOR, 60), (vis.GOOD_COLOR, 80)]
  for i, (color, value) in enumerate(expected):
    border, inside = border_pixel(img, 0, i)
    assert border == color and inside == (value,) * 3
  with pytest.raises(ValueError, match='distmat'):
    vis.ranked_list_picture_from_distances(distmat[:, :2], query, gallery, [0], None)


def test_bad_status_raises():
  with pytest.raises(ValueError, match='status'):
    vis.ranked_list_picture([solid_tracklet(1)], [[solid_tracklet(2)]], [['maybe']], None)
