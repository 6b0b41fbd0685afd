"""load_npz: big_vision / vision_transformer (AugReg) .npz layouts, checked against timm's own loader.

The writer below builds the .npz from the published layout (not from tokax.interop's code): per-head
query/key/value kernels (D, H, Dh) and biases (H, Dh), out kernel (H, Dh, D), HWIO patch conv.
"""
import jax
import numpy as np
import pytest

from interop.interop_helpers import images, random_timm, relative, run_timm
from tokax.interop import from_timm, load_checkpoint, load_npz
from tokax.interop.big_vision import UnknownKeysError

SIZE, HEADS = 64, 3  # Ti/16 at 64 px
# layout name -> (prefix, sub-module numbers (attention, LayerNorm, MlpBlock), position key, scanned)
LAYOUTS = {
    "vision_transformer": ("", (1, 2, 3), "Transformer/posembed_input/pos_embedding", False),
    "big_vision": ("params/", (0, 1, 0), "pos_embedding", False),
    "big_vision_scanned": ("params/img/", (0, 1, 0), "pos_embedding", True),
}


def write_npz(path, params, layout: str, *, cls_position: bool = True, extra=None) -> None:
  """tokax params -> an .npz in `layout`; cls_position=False writes big_vision's (1, N, D) table."""
  prefix, (attn, ln, mlp), pos_key, scanned = LAYOUTS[layout]
  p = params["params"]
  width = p["patch_embed"]["kernel"].shape[-1]
  head_dim = width // HEADS
  pos = np.asarray(p["pos_embed"])
  out = {
      "embedding/kernel": p["patch_embed"]["kernel"], "embedding/bias": p["patch_embed"]["bias"],
      "cls": p["cls_token"], pos_key: pos if cls_position else pos[:, 1:],
      "Transformer/encoder_norm/scale": p["norm"]["scale"], "Transformer/encoder_norm/bias": p["norm"]["bias"],
      "head/kernel": p["head"]["kernel"], "head/bias": p["head"]["bias"],
  }
  blocks = []
  for i in range(12):
    b = p[f"blocks_{i}"]
    qkv_kernel = np.asarray(b["attn"]["qkv"]["kernel"]).reshape(width, 3, HEADS, head_dim)
    qkv_bias = np.asarray(b["attn"]["qkv"]["bias"]).reshape(3, HEADS, head_dim)
    mha = f"MultiHeadDotProductAttention_{attn}"
    block = {
        "LayerNorm_0/scale": b["norm1"]["scale"], "LayerNorm_0/bias": b["norm1"]["bias"],
        f"{mha}/out/kernel": np.asarray(b["attn"]["proj"]["kernel"]).reshape(HEADS, head_dim, width),
        f"{mha}/out/bias": b["attn"]["proj"]["bias"],
        f"LayerNorm_{ln}/scale": b["norm2"]["scale"], f"LayerNorm_{ln}/bias": b["norm2"]["bias"],
        f"MlpBlock_{mlp}/Dense_0/kernel": b["mlp_fc1"]["kernel"], f"MlpBlock_{mlp}/Dense_0/bias": b["mlp_fc1"]["bias"],
        f"MlpBlock_{mlp}/Dense_1/kernel": b["mlp_fc2"]["kernel"], f"MlpBlock_{mlp}/Dense_1/bias": b["mlp_fc2"]["bias"],
    }
    for j, name in enumerate(("query", "key", "value")):
      block[f"{mha}/{name}/kernel"] = qkv_kernel[:, j]
      block[f"{mha}/{name}/bias"] = qkv_bias[j]
    blocks.append(block)
  if scanned:
    out.update({f"Transformer/encoderblock/{k}": np.stack([np.asarray(b[k]) for b in blocks]) for k in blocks[0]})
  else:
    out.update({f"Transformer/encoderblock_{i}/{k}": v for i, b in enumerate(blocks) for k, v in b.items()})
  out.update(extra or {})
  np.savez(path, **{prefix + k: np.asarray(v, np.float32) for k, v in out.items()})


@pytest.fixture(scope="module")
def tiny(timm):
  """(tokax model, params, jitted forward) of a randomised 10-class Ti/16 at 64 px."""
  model, params = from_timm(random_timm(timm, "vit_tiny_patch16_224", seed=4, img_size=SIZE, num_classes=10))
  return model, params, jax.jit(model.apply)


def _timm_logits_after_timm_load(timm, path, x, **kwargs):
  """timm's own .npz loader (_load_weights) into a fresh, differently-randomised timm model."""
  from timm.models.vision_transformer import _load_weights
  fresh = random_timm(timm, "vit_tiny_patch16_224", seed=99, img_size=SIZE, num_classes=10, **kwargs)
  _load_weights(fresh, str(path))
  return run_timm(fresh, x)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_npz_layouts_load_exactly_and_match_timm(timm, tiny, tmp_path, layout):
  model, params, forward = tiny
  path = tmp_path / f"{layout}.npz"
  write_npz(path, params, layout)
  loaded = load_npz(path, model)
  for (key, want), (_, got) in zip(jax.tree_util.tree_leaves_with_path(params),
                                   jax.tree_util.tree_leaves_with_path(loaded)):
    np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(key))
  x = images(2, SIZE)
  logits = np.asarray(forward(loaded, x))
  np.testing.assert_array_equal(logits, np.asarray(forward(params, x)))
  assert relative(logits, _timm_logits_after_timm_load(timm, path, x)) <= 1e-4


def test_big_vision_position_table_without_cls_row(timm, tiny, tmp_path):
  """big_vision adds posemb before prepending [cls]: (1, N, D), the class token gets a zero row."""
  model, params, forward = tiny
  params = jax.tree.map(np.array, params)
  params["params"]["pos_embed"][:, 0] = 0.0  # the function such a checkpoint computes
  path = tmp_path / "bv.npz"
  write_npz(path, params, "big_vision", cls_position=False)
  loaded = load_checkpoint(path, model)  # .npz routes to load_npz
  np.testing.assert_array_equal(loaded["params"]["pos_embed"], params["params"]["pos_embed"])
  x = images(2, SIZE)
  logits = np.asarray(forward(loaded, x))
  # timm models with no_embed_class=True hold a (1, N, D) table and add it before the concat.
  assert relative(logits, _timm_logits_after_timm_load(timm, path, x, no_embed_class=True)) <= 1e-4


@pytest.mark.parametrize("extra, drop, message", [
    ({"pre_logits/kernel": np.ones((192, 192)), "pre_logits/bias": np.ones(192)}, (),
     r"a pre_logits layer \(representation_size"),
    ({"MAPHead_0/probe": np.ones((1, 1, 192))}, ("cls",), r"attention pooling \(pool_type='map'"),
    ({}, ("cls",), r"no class token \(pool_type='gap' or '0'\): big_vision applies encoder_norm to every token"),
    ({}, ("pos_embedding",), r"no stored position embedding \(posemb='sincos2d'"),
])
def test_refuses_checkpoints_tokax_would_compute_differently(tiny, tmp_path, extra, drop, message):
  model, params, _ = tiny
  path = tmp_path / "bv.npz"
  write_npz(path, params, "big_vision", extra=extra)
  arrays = dict(np.load(path))
  np.savez(path, **{k: v for k, v in arrays.items() if k.split("/", 1)[1] not in drop})
  with pytest.raises(ValueError, match=message):
    load_npz(path, model)


def test_gap_model_and_mismatches_are_refused(tiny, tmp_path):
  model, params, _ = tiny
  path = tmp_path / "vt.npz"
  write_npz(path, params, "vision_transformer")
  with pytest.raises(ValueError, match=r"need ViT\(pool='cls', class_token=True, distilled=False\)"):
    load_npz(path, model.clone(pool="gap"))
  with pytest.raises(ValueError, match=r"head/kernel: checkpoint shape \(192, 10\), model shape \(192, 21843\): "
                                       r"set ViT\(num_classes=10\)"):
    load_npz(path, model.clone(num_classes=21843))
  assert "head" not in load_npz(path, model.clone(num_classes=0))["params"]


def test_head_count_is_checked(tiny, tmp_path):
  """Fused qkv shapes cannot tell heads apart; the per-head kernels can."""
  model, params, _ = tiny
  path = tmp_path / "vt.npz"
  write_npz(path, params, "vision_transformer")
  arrays = dict(np.load(path))
  for k in [k for k in arrays if "/query/" in k or "/key/" in k or "/value/" in k or "/out/kernel" in k]:
    arrays[k] = arrays[k].reshape(arrays[k].shape[:-2] + (6, 32)) if "/out/" not in k else \
        arrays[k].reshape(6, 32, 192)
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=r"block 0 has 6 attention heads .* the model 3"):
    load_npz(path, model)


def test_unknown_arrays_under_the_prefix_are_refused_unless_allowed(tiny, tmp_path):
  """A scanned big_vision SigLIP-style file: an extra array in the image tower is named and refused; the text
  tower beside it (outside the prefix) is not the ViT's and is not checked."""
  model, params, _ = tiny
  path = tmp_path / "siglip_like.npz"
  extra = {"Transformer/encoderblock/LayerScale_0/scale": np.full((12, 192), 0.1),
           "../txt/Transformer/encoder_norm/scale": np.ones(192)}
  write_npz(path, params, "big_vision_scanned", extra=extra)
  arrays = dict(np.load(path))
  arrays["params/txt/Transformer/encoder_norm/scale"] = arrays.pop("params/img/../txt/Transformer/encoder_norm/scale")
  np.savez(path, **arrays)
  with pytest.raises(UnknownKeysError, match=r"siglip_like.npz: 1 arrays of this checkpoint are not read into tokax's "
                                             r"ViT and would be dropped: \['params/img/Transformer/encoderblock/"
                                             r"LayerScale_0/scale'\]"):
    load_npz(path, model)
  loaded = load_npz(path, model, allow_unknown=True)
  np.testing.assert_array_equal(loaded["params"]["blocks_11"]["norm1"]["scale"],
                                params["params"]["blocks_11"]["norm1"]["scale"])
