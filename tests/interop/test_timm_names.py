"""tokax.interop.timm_names against the installed timm: the table is timm's registry, the parsed ViT fields are
what from_timm reads off timm's model (built on the meta device: no weights, no compute)."""
import pytest

from tokax.interop import timm_names
from tokax.interop.timm import timm_config


def test_the_table_is_timms_registry(timm):
  from timm.models import get_pretrained_cfg

  archs = sorted(n for n in timm.list_models() if timm_names._ARCH.match(n))
  assert archs == sorted(timm_names.PRETRAINED), "update timm_names.PRETRAINED from timm's registry"
  for arch, rows in timm_names.PRETRAINED.items():
    assert sorted(timm.list_pretrained(arch + ".*")) == timm_names.timm_names(arch + ".*", pretrained=True)
    if rows:
      assert get_pretrained_cfg(arch).hf_hub_id == timm_names.hub_repo(arch), arch  # timm's default tag
    for tag, *_ in rows:
      name = f"{arch}.{tag}"
      cfg = get_pretrained_cfg(name)
      kwargs, norm = timm_names.parse_timm_name(name)
      assert (cfg.num_classes, tuple(cfg.mean), tuple(cfg.std), cfg.crop_pct) == (
          kwargs["num_classes"], norm["mean"], norm["std"], norm["crop_pct"]), name
      assert cfg.hf_hub_id == timm_names.hub_repo(name), name


@pytest.mark.parametrize("name", ["vit_tiny_patch16_384", "vit_base_patch8_224", "vit_large_patch32_224",
                                  "vit_huge_patch14_224", "deit_small_distilled_patch16_224",
                                  "deit3_medium_patch16_224", "deit3_huge_patch14_224"])
def test_the_parsed_fields_are_what_from_timm_reads_off_timms_model(timm, name):
  import torch

  with torch.device("meta"):
    model = timm.create_model(name, pretrained=False)
  want = {k: v for k, v in timm_config(model).items() if k != "drop_path"}
  assert timm_names.parse_timm_name(name)[0] == want
