r"""The official PyTorch GRL train step (flysnowtiger/GRL), timed on this machine's device.

    PYTHONPATH=scratch/GRL:. python -m benchmarks.device.torch_grl --grl_dir=scratch/GRL \
        [--smoke] [--modes amp fp32]

Run by benchmarks/device_suite.py in a process of its own, before any JAX work (JAX would
otherwise hold most of the GPU's memory); prints one JSON row per mode (benchmarks/device/
common.py). Imports no JAX.

What is timed is one iteration of the official `SEQTrainer` (`reid/train/trainer.py` of that
repository), rebuilt here from its parts because the trainer module itself needs tensorboardX
and a data loader: the official `resnet50_grl` CNN (in `torch.nn.DataParallel`, as
`mars_train.py`), the `siamese` and `siamese_video` heads, `OIMLoss` x 2 (scalar 30, momentum
0.5), `PairLoss`, the soft batch-hard `TripletLoss`, SGD Nesterov with the four lr groups, and

    loss = OIM_uncorr(video) + OIM_corr(frames) + OIM_corr(video) + 20 BCE_ver + triplet

then backward, the optimiser step and `loss.item()` (the official loop logs it every step).
cudnn.benchmark is on, as in `mars_train.py`; the torch matmul/cudnn TF32 switches are left at
torch's defaults (recorded in the row). Modes: `fp32` (the official code) and `amp`
(torch.autocast in `--amp_dtype`, bfloat16 by default so it matches the JAX bf16 rows; float16
adds a GradScaler).

Adaptations needed to run the 2019 code on torch 2.x, none changing the maths:
* `reid.loss.oim.OIM` is a legacy autograd.Function (non-static forward), which torch >= 1.5
  rejects; `oim` is replaced by a static Function with the same forward (x @ lut^T), the same
  backward (grad @ lut) and the same in-backward table update (per sample, in order:
  lut[y] = m lut[y] + (1 - m) x, then renormalised), with dtype casts for autocast.
* the ResNet-50 would download ImageNet weights (`pretrained=True`); it is built with random
  weights instead (no network there; timing does not depend on the values).
* `torchvision` (imported, unused, by `grl_model.py`) and `reid.evaluator` (whose `accuracy`
  PairLoss calls; the package also pulls scipy / sklearn / plotting code) get minimal
  stand-ins only when they cannot be imported.
The model hard-codes a 16 x 8 feature map, so frames are always 256 x 128; `--smoke` only
shrinks the batch (4 clips x 2 frames) and the step counts.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import time
import types

from benchmarks.device import common


_OFFICIAL = {}


def _import_official(grl_dir: str):
  """Imports the official modules from `grl_dir` with the adaptations above (once)."""
  if 'models' in _OFFICIAL:
    return _OFFICIAL['models'], _OFFICIAL['notes']
  import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  # The official code imports `reid` and `utils` top-level: the caller puts `grl_dir` on
  # PYTHONPATH (benchmarks/device_suite.py does); nothing here edits the import path.
  grl_dir = os.path.abspath(grl_dir)
  spec = importlib.util.find_spec('reid')
  origin = os.path.abspath(spec.origin or '') if spec else ''
  if not origin.startswith(grl_dir + os.sep):
    raise ImportError(f'the official `reid` package of {grl_dir} is not importable (found '
                      f'{origin or "none"}); run with PYTHONPATH={grl_dir}')
  notes = []
  try:
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    # reid/models/resnet.py names torchvision.models.resnet* at import; GRL never calls them.
    def absent(name):
      if name.startswith('_'):
        raise AttributeError(name)

      def build(*a, **k):
        raise ImportError(f'torchvision.models.{name}: torchvision is not installed')
      return build
    tv, tv_models = types.ModuleType('torchvision'), types.ModuleType('torchvision.models')
    tv_models.__getattr__ = absent
    tv.models = tv_models
    sys.modules.update({'torchvision': tv, 'torchvision.models': tv_models})
    notes.append('torchvision stand-in (unused by the model)')
  try:
    import reid.evaluator  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    stand_in = types.ModuleType('reid.evaluator')

    def accuracy(output, target, topk=(1,)):
      # Top-k precision, as the official eva_functions.accuracy returns it (list of tensors).
      pred = output.topk(max(topk), 1, True, True)[1].t()
      correct = pred.eq(target.view(1, -1).expand_as(pred))
      return [correct[:k].reshape(-1).float().sum(0) / target.size(0) for k in topk]

    stand_in.accuracy = accuracy
    import reid  # pylint: disable=g-import-not-at-top
    sys.modules['reid.evaluator'] = stand_in
    reid.evaluator = stand_in
    notes.append('reid.evaluator stand-in (accuracy only)')

  from reid import models  # pylint: disable=g-import-not-at-top
  import reid.loss  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  # The package re-exports the function `oim` under the submodule's name: take the module.
  oim_module = sys.modules['reid.loss.oim']
  from reid.models import basebranch  # pylint: disable=g-import-not-at-top

  class OIMFunction(torch.autograd.Function):
    """The official OIM forward / backward / table update as a static autograd.Function."""

    @staticmethod
    def forward(ctx, inputs, targets, lut, momentum):
      ctx.save_for_backward(inputs, targets)
      ctx.lut, ctx.momentum = lut, momentum
      return inputs.mm(lut.t().to(inputs.dtype))

    @staticmethod
    def backward(ctx, grad_outputs):
      inputs, targets = ctx.saved_tensors
      lut, m = ctx.lut, ctx.momentum
      grad_inputs = None
      if ctx.needs_input_grad[0]:
        grad_inputs = grad_outputs.to(lut.dtype).mm(lut).to(inputs.dtype)
      for x, y in zip(inputs, targets):   # sequential, as the official loop (order matters)
        lut[y] = m * lut[y] + (1. - m) * x.to(lut.dtype)
        lut[y] /= lut[y].norm()
      return grad_inputs, None, None, None

  oim_module.oim = lambda inputs, targets, lut, momentum=0.5: OIMFunction.apply(
      inputs, targets, lut, momentum)
  original = basebranch.resnet50_s1
  basebranch.resnet50_s1 = lambda pretrained=True, **kw: original(pretrained=False, **kw)
  notes.append('random ResNet-50 weights (pretrained=False)')
  _OFFICIAL.update(models=models, notes=notes)
  return models, notes


def run_mode(mode: str, args, device) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  models, notes = _import_official(args.grl_dir)
  from reid.loss import OIMLoss, PairLoss, TripletLoss  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  torch.backends.cudnn.benchmark = True
  b, t, classes = args.batch, args.seq_len, args.num_classes
  cnn = torch.nn.DataParallel(models.create('resnet50_grl', num_features=2048, dropout=0.0,
                                            numclasses=classes)).to(device)
  siamese = models.create('siamese', input_num=2048, output_num=512, class_num=2).to(device)
  siamese_u = models.create('siamese_video', input_num=2048, output_num=512,
                            class_num=2).to(device)
  crit_corr = OIMLoss(2048, classes, scalar=30, momentum=0.5).to(device)
  crit_uncorr = OIMLoss(2048, classes, scalar=30, momentum=0.5).to(device)
  crit_ver, triplet = PairLoss().to(device), TripletLoss('soft', True)
  backbone = set(map(id, cnn.module.backbone.parameters()))
  groups = [{'params': list(cnn.module.backbone.parameters()), 'lr_mult': 1},
            {'params': [p for p in cnn.parameters() if id(p) not in backbone], 'lr_mult': 2},
            {'params': list(siamese.parameters()), 'lr_mult': 2},
            {'params': list(siamese_u.parameters()), 'lr_mult': 2}]
  opt = torch.optim.SGD(groups, lr=1e-3, momentum=0.9, weight_decay=5e-4, nesterov=True)
  for g in opt.param_groups:
    g['lr'] = 1e-3 * g['lr_mult']
  for mod in (cnn, siamese, siamese_u):
    mod.train()

  gen = torch.Generator().manual_seed(0)
  frames = torch.randint(0, 256, (b, t, 3, 256, 128), generator=gen, dtype=torch.uint8)
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1) * 255
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1) * 255
  imgs = ((frames.float() - mean) / std).to(device)
  pids = torch.arange(b // 2).repeat_interleave(2) % classes   # pairs of one identity
  targets = pids.to(device)
  amp_dtype = getattr(torch, args.amp_dtype)
  use_amp = mode == 'amp'
  scaler = (torch.amp.GradScaler(device.type) if use_amp and amp_dtype == torch.float16
            else None)

  def verification(encode):
    s = F.softmax(encode.reshape(-1, 2), dim=-1).reshape(encode.size(0), encode.size(1), 2)
    return s[:, :, 1]

  def step():
    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
      x_uncorr, x_corr = cnn(imgs)
      frame_t = targets.unsqueeze(1).expand(b, t).reshape(-1)
      l_frame, _ = crit_corr(x_corr.reshape(b * t, -1), frame_t)
      pairs = targets.view(b // 2, -1)
      probe, gallery = pairs[:, 0], pairs[:, 1]
      vid_t = torch.cat((probe, gallery))
      enc, vid = siamese(x_corr)
      l_vid, _ = crit_corr(vid, vid_t)
      l_tri = triplet(vid, vid_t).mean()
      l_ver, _ = crit_ver(verification(enc).float(), probe, gallery)
      enc_u, vid_u = siamese_u(x_uncorr)
      l_uid, _ = crit_uncorr(vid_u, vid_t)
      crit_ver(verification(enc_u).float(), probe, gallery)   # computed, unused (as official)
      loss = l_uid + l_frame + l_vid + 20 * l_ver + l_tri
    opt.zero_grad()
    if scaler is not None:
      scaler.scale(loss).backward()
      scaler.step(opt)
      scaler.update()
    else:
      loss.backward()
      opt.step()
    return loss.item()

  def sync(_):
    if device.type == 'cuda':
      torch.cuda.synchronize()

  t0 = time.perf_counter()
  step()   # cudnn.benchmark picks its algorithms here
  sync(None)
  first_s = time.perf_counter() - t0
  with FlopCounterMode(display=False) as counter:
    step()
  flops = float(counter.get_total_flops())
  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  times = common.time_calls(step, sync, steps=args.steps, warmup=args.warmup)
  step_s = common.median(times)
  if device.type == 'cuda':
    mem, mem_src = torch.cuda.max_memory_allocated() / 2**30, 'torch.cuda.max_memory_allocated'
  else:
    mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    mem_src = 'host peak RSS of the process'
  name = 'official_grl_train_' + mode
  config = {'model': 'official GRL (PyTorch)', 'dtype': args.amp_dtype if use_amp else 'float32',
            'batch': f'{b}x{t}x256x128', 'torch': torch.__version__,
            'cudnn_benchmark': True,
            'matmul_tf32': bool(torch.backends.cuda.matmul.allow_tf32),
            'cudnn_tf32': bool(torch.backends.cudnn.allow_tf32),
            'adaptations': notes, 'smoke': bool(args.smoke)}
  dev_name = (torch.cuda.get_device_name(device) if device.type == 'cuda'
              else 'cpu (torch)')
  return common.make_row(
      name, config, clips_per_s=b / step_s, step_s=step_s, step_s_min=min(times),
      compile_s=first_s, compile_note='first step (cudnn.benchmark autotuning), no compiler',
      peak_memory_gib=mem, memory_source=mem_src, flops_per_step=flops,
      flops_source='torch.utils.flop_counter (forward + backward matmuls/convs)',
      steps=args.steps, device=dev_name, platform=device.type)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--grl_dir', default='scratch/GRL')
  p.add_argument('--modes', nargs='+', default=['amp', 'fp32'], choices=['amp', 'fp32'])
  p.add_argument('--amp_dtype', default='bfloat16', choices=['bfloat16', 'float16'])
  p.add_argument('--smoke', action='store_true')
  p.add_argument('--batch', type=int, default=None)
  p.add_argument('--seq_len', type=int, default=None)
  p.add_argument('--steps', type=int, default=None)
  p.add_argument('--warmup', type=int, default=None)
  p.add_argument('--num_classes', type=int, default=625)
  args = p.parse_args(argv)
  args.batch = args.batch or (4 if args.smoke else 16)
  args.seq_len = args.seq_len or (2 if args.smoke else 8)
  args.steps = args.steps or (2 if args.smoke else 10)
  args.warmup = args.warmup if args.warmup is not None else (0 if args.smoke else 2)
  import torch  # pylint: disable=g-import-not-at-top
  device = torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')
  for mode in args.modes:
    try:
      row = run_mode(mode, args, device)
    except Exception as e:  # pylint: disable=broad-except  (report the row, try the next mode)
      row = common.skipped_row('official_grl_train_' + mode, {'smoke': bool(args.smoke)},
                               f'official step failed: {type(e).__name__}: '
                               f'{str(e).splitlines()[0][:300] if str(e) else ""}')
    print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main()
