r"""Tokenizer speed: train steps/s and encode+decode images/s, tokax vs the same network in PyTorch.

  # H100, the photos_tokenizer architecture at 64 px and the MaskGIT one at 256 px:
  python -m tokax.bench.tokenizer_speed --image-size 64 --batch 128 --filters 64 --mults 1,1,2,4 \
      --z-channels 128 --dtype bfloat16 --gan --out /tmp/tok_speed_64.json
  python -m tokax.bench.tokenizer_speed --image-size 256 --batch 32 --filters 128 --mults 1,1,2,2,4 \
      --z-channels 256 --dtype bfloat16 --gan --out /tmp/tok_speed_256.json
  # CPU smoke run:
  python -m tokax.bench.tokenizer_speed --image-size 16 --batch 2 --filters 8 --mults 1,2 --z-channels 8 \
      --norm-groups 4 --steps 2 --warmup 1

The model is the KL autoencoder (tokax.tokenizers.vae; continuous, so no quantizer is timed) with
L1 + KL loss, and with --gan the PatchGAN hinge loss, the adaptive weight and the discriminator
update, exactly as tokax.train.tokenizer_step. The PyTorch side (written here, same layers, same
parameter counts) runs channels_last with torch.compile of its forward passes and bf16 autocast
when --dtype bfloat16; its step takes the adaptive weight with torch.autograd.grad like taming.
Prints one markdown table; speed-ups are ratios within this run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def _time(fn: Callable[[], Any], *, warmup: int, repeats: int, sync: Callable[[Any], Any]) -> float:
  """Median seconds of fn() over `repeats` calls after `warmup` (each synced)."""
  for _ in range(warmup):
    sync(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# --- tokax ------------------------------------------------------------------------------------


def tokax_rows(args) -> dict[str, float]:
  from tokax.tokenizers import losses
  from tokax.tokenizers.vae import KLAutoencoder
  from tokax.train import optim
  from tokax.train.tokenizer_step import LossConfig, init_state, make_train_step

  dtype = jnp.dtype(args.dtype)
  model = KLAutoencoder(latent_channels=args.latent_channels, kl_weight=1e-6, filters=args.filters,
                        channel_multipliers=args.mults, num_res_blocks=args.num_res_blocks,
                        z_channels=args.z_channels, norm_groups=args.norm_groups, dtype=dtype)
  disc = losses.NLayerDiscriminator(ndf=args.ndf, num_layers=args.disc_layers, norm_groups=args.norm_groups,
                                    dtype=dtype) if args.gan else None
  schedule = optim.lr_schedule(peak_lr=1e-4, warmup_steps=0, total_steps=10_000)
  g_tx = optim.adamw(schedule, weight_decay=0.0, grad_clip_norm=None, b1=0.5, b2=0.9)
  d_tx = optim.adamw(schedule, weight_decay=0.0, grad_clip_norm=None, b1=0.5, b2=0.9)
  shape = (args.image_size, args.image_size, 3)
  state = jax.jit(lambda r: init_state(model, disc, g_tx, d_tx, r, shape, step_rng=jax.random.key(2)))(
      jax.random.key(0, impl="rbg"))
  loss = LossConfig(reconstruction="l1", gan="hinge" if args.gan else "none", disc_start=0)
  step = jax.jit(make_train_step(model=model, discriminator=disc, g_tx=g_tx, d_tx=d_tx, schedule=schedule,
                                 loss=loss, ema_decay=0.999), donate_argnums=(0,))
  images = jax.random.uniform(jax.random.key(1), (args.batch, *shape), jnp.float32)
  batch = {"image": images}
  holder = {"state": state}

  def train_once():
    holder["state"], metrics = step(holder["state"], batch)
    return metrics["loss"]

  train_s = _time(train_once, warmup=args.warmup, repeats=args.steps, sync=jax.block_until_ready)
  variables = holder["state"].variables()
  roundtrip = jax.jit(lambda v, x: model.apply(v, model.apply(v, x, method=KLAutoencoder.encode),
                                               method=KLAutoencoder.decode))
  infer_s = _time(lambda: roundtrip(variables, images), warmup=args.warmup, repeats=args.steps,
                  sync=jax.block_until_ready)
  return {"train_steps_per_s": 1.0 / train_s, "encode_decode_images_per_s": args.batch / infer_s}


# --- PyTorch ----------------------------------------------------------------------------------


def torch_modules(args):
  """(autoencoder, discriminator or None): tokax's KLAutoencoder and NLayerDiscriminator in PyTorch (NCHW)."""
  import torch
  from torch import nn
  import torch.nn.functional as F

  groups = args.norm_groups

  class ResBlock(nn.Module):
    def __init__(self, cin, cout):
      super().__init__()
      self.norm1, self.conv1 = nn.GroupNorm(groups, cin, eps=1e-6), nn.Conv2d(cin, cout, 3, padding=1, bias=False)
      self.norm2, self.conv2 = nn.GroupNorm(groups, cout, eps=1e-6), nn.Conv2d(cout, cout, 3, padding=1, bias=False)
      self.shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x):
      h = self.conv1(F.silu(self.norm1(x)))
      h = self.conv2(F.silu(self.norm2(h)))
      return h + self.shortcut(x)

  class Encoder(nn.Module):
    def __init__(self):
      super().__init__()
      f, mults = args.filters, args.mults
      self.conv_in = nn.Conv2d(3, f, 3, padding=1, bias=False)
      self.levels = nn.ModuleList()
      cin = f
      for m in mults:
        blocks = []
        for _ in range(args.num_res_blocks):
          blocks.append(ResBlock(cin, f * m))
          cin = f * m
        self.levels.append(nn.Sequential(*blocks))
      self.mid = nn.Sequential(*[ResBlock(cin, cin) for _ in range(args.num_res_blocks)])
      self.norm, self.conv_out = nn.GroupNorm(groups, cin, eps=1e-6), nn.Conv2d(cin, args.z_channels, 1)

    def forward(self, x):
      x = self.conv_in(x)
      for i, level in enumerate(self.levels):
        x = level(x)
        if i < len(self.levels) - 1:
          x = F.avg_pool2d(x, 2)
      return self.conv_out(F.silu(self.norm(self.mid(x))))

  class Decoder(nn.Module):
    def __init__(self):
      super().__init__()
      f, mults = args.filters, args.mults
      cin = f * mults[-1]
      self.conv_in = nn.Conv2d(args.z_channels, cin, 3, padding=1)
      self.mid = nn.Sequential(*[ResBlock(cin, cin) for _ in range(args.num_res_blocks)])
      self.levels, self.ups = nn.ModuleList(), nn.ModuleList()
      for i in reversed(range(len(mults))):
        blocks = []
        for _ in range(args.num_res_blocks):
          blocks.append(ResBlock(cin, f * mults[i]))
          cin = f * mults[i]
        self.levels.append(nn.Sequential(*blocks))
        self.ups.append(nn.Conv2d(cin, cin, 3, padding=1) if i > 0 else nn.Identity())
      self.norm, self.conv_out = nn.GroupNorm(groups, cin, eps=1e-6), nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z):
      x = self.mid(self.conv_in(z))
      for level, up in zip(self.levels, self.ups):
        x = level(x)
        if not isinstance(up, nn.Identity):
          x = up(F.interpolate(x, scale_factor=2, mode="nearest"))
      return self.conv_out(F.silu(self.norm(x)))

  class KLAutoencoder(nn.Module):
    def __init__(self):
      super().__init__()
      self.encoder, self.decoder = Encoder(), Decoder()
      self.quant_conv = nn.Conv2d(args.z_channels, 2 * args.latent_channels, 1)
      self.post_quant_conv = nn.Conv2d(args.latent_channels, args.z_channels, 1)

    def posterior(self, images):  # images in [0, 1]
      mean, logvar = self.quant_conv(self.encoder(images * 2 - 1)).float().chunk(2, dim=1)
      return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
      return self.decoder(self.post_quant_conv(z))

  class Discriminator(nn.Module):
    def __init__(self):
      super().__init__()
      ndf, n = args.ndf, args.disc_layers
      layers = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
      for i in range(1, n):
        layers += [nn.Conv2d(ndf * min(2 ** (i - 1), 8), ndf * min(2 ** i, 8), 4, 2, 1),
                   nn.GroupNorm(groups, ndf * min(2 ** i, 8), eps=1e-5), nn.LeakyReLU(0.2)]
      layers += [nn.Conv2d(ndf * min(2 ** (n - 1), 8), ndf * min(2 ** n, 8), 4, 1, 1),
                 nn.GroupNorm(groups, ndf * min(2 ** n, 8), eps=1e-5), nn.LeakyReLU(0.2),
                 nn.Conv2d(ndf * min(2 ** n, 8), 1, 4, 1, 1)]
      self.net = nn.Sequential(*layers)

    def forward(self, x):
      return self.net(x)

  return KLAutoencoder(), (Discriminator() if args.gan else None)


def torch_rows(args) -> dict[str, float]:
  import torch
  import torch.nn.functional as F

  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
  model, disc = torch_modules(args)
  model = model.to(device, memory_format=torch.channels_last)
  g_opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.9))
  if disc is not None:
    disc = disc.to(device, memory_format=torch.channels_last)
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.9))
  compile_ = (lambda f: torch.compile(f)) if args.torch_compile else (lambda f: f)
  encode, decode = compile_(model.posterior), compile_(model.decode)
  disc_fn = compile_(disc) if disc is not None else None
  last = model.decoder.conv_out.weight
  images = torch.rand(args.batch, 3, args.image_size, args.image_size, device=device).contiguous(
      memory_format=torch.channels_last)
  x = images * 2 - 1

  def train_once():
    with autocast:
      mean, logvar = encode(images)
      z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
      recon = decode(z).float()
      nll = (recon - x).abs().mean()
      kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean() / x[0].numel()
      loss = nll + 1e-6 * kl
      if disc_fn is not None:
        g_loss = -disc_fn(recon).float().mean()
        nll_grad = torch.autograd.grad(nll, last, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        weight = (torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-4)).clamp(0, 1e4).detach() * 0.8
        loss = loss + weight * g_loss
    g_opt.zero_grad(set_to_none=True)
    loss.backward()
    g_opt.step()
    if disc_fn is not None:
      with autocast:
        d_loss = 0.5 * (F.relu(1 - disc_fn(x)).float().mean() + F.relu(1 + disc_fn(recon.detach())).float().mean())
      d_opt.zero_grad(set_to_none=True)
      d_loss.backward()
      d_opt.step()
    return loss

  train_s = _time(train_once, warmup=args.warmup, repeats=args.steps, sync=sync)

  @torch.no_grad()
  def roundtrip():
    with autocast:
      return decode(encode(images)[0])

  infer_s = _time(roundtrip, warmup=args.warmup, repeats=args.steps, sync=sync)
  return {"train_steps_per_s": 1.0 / train_s, "encode_decode_images_per_s": args.batch / infer_s}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--filters", type=int, default=64)
  parser.add_argument("--mults", type=lambda s: tuple(int(v) for v in s.split(",")), default=(1, 1, 2, 4))
  parser.add_argument("--num-res-blocks", type=int, default=2)
  parser.add_argument("--z-channels", type=int, default=128)
  parser.add_argument("--latent-channels", type=int, default=4)
  parser.add_argument("--norm-groups", type=int, default=32)
  parser.add_argument("--ndf", type=int, default=64)
  parser.add_argument("--disc-layers", type=int, default=3)
  parser.add_argument("--gan", action="store_true", help="add the PatchGAN, adaptive weight and D update")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--steps", type=int, default=20, help="timed calls (median)")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--no-torch-compile", dest="torch_compile", action="store_false")
  parser.add_argument("--out", default=None, help="write the rows as JSON here")
  args = parser.parse_args(argv)
  rows = [{"impl": "tokax (jax.jit)", "device": str(jax.devices()[0].device_kind), **tokax_rows(args)}]
  if not args.no_torch:
    import torch
    name = "pytorch" + (" (torch.compile)" if args.torch_compile else " (eager)")
    rows.append({"impl": name, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                 **torch_rows(args)})
  print(f"image {args.image_size}, batch {args.batch}, filters {args.filters}, mults {args.mults}, "
        f"dtype {args.dtype}, gan {args.gan}")
  print("| impl | device | train steps/s | encode+decode images/s |\n|---|---|---|---|")
  for row in rows:
    print(f"| {row['impl']} | {row['device']} | {row['train_steps_per_s']:.2f} | {row['encode_decode_images_per_s']:.1f} |")
  if len(rows) == 2:
    print(f"tokax / pytorch: train {rows[0]['train_steps_per_s'] / rows[1]['train_steps_per_s']:.2f}x, "
          f"encode+decode {rows[0]['encode_decode_images_per_s'] / rows[1]['encode_decode_images_per_s']:.2f}x")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"args": {k: v for k, v in vars(args).items()}, "rows": rows}, f, indent=2, default=str)
  return rows


if __name__ == "__main__":
  main()
