"""tfds datasets as researchers have them: array_record and TFRecord on disk, read without TensorFlow."""
import io
import os
import pickle
import re
import shutil
import struct

import ml_collections
import numpy as np
import pytest
from PIL import Image

from data import tfds_testing  # tests/data/tfds_testing.py (tests/ is on sys.path)
from tokax.data import pipeline, tfds, tfrecord, transforms
from tokax.train.tasks import classifier

NUM_TRAIN, NUM_VAL = 24, 8


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """{file_format: data_dir} of the tiny imagenet, built in both formats."""
  dirs = {}
  for file_format in tfds_testing.FILE_FORMATS:
    data_dir = tmp_path_factory.mktemp(file_format)
    assert tfds_testing.build_tiny_imagenet(data_dir, file_format=file_format, num_train=NUM_TRAIN,
                                            num_val=NUM_VAL) == tfds_testing.NAME
    dirs[file_format] = str(data_dir)
  return dirs


def _crc32c_bitwise(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def test_crc32c_and_tfrecord_framing(tmp_path):
  # RFC 3720 (iSCSI) B.4 vectors and the CRC catalogue's check value
  assert tfrecord.crc32c(b"123456789") == 0xE3069283
  assert tfrecord.crc32c(bytes(32)) == 0x8A9136AA
  assert tfrecord.crc32c(b"\xff" * 32) == 0x62A8AB43
  assert tfrecord.crc32c(bytes(range(32))) == 0x46DD794E
  assert tfrecord.crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
  rng = np.random.default_rng(0)
  for n in (0, 1, 5, 64, 65, 255, 256, 257, 1000, 5000):  # the byte loop and the chunked path, odd chunk counts
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    assert tfrecord.crc32c(data) == _crc32c_bitwise(data), n

  records = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in (0, 7, 300, 4099)]
  path = tmp_path / "x.tfrecord"
  assert tfrecord.write(path, records) == 4
  blob = path.read_bytes()
  crc = _crc32c_bitwise(struct.pack("<Q", 7))
  masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  second = 12 + 0 + 4
  assert blob[second:second + 12] == struct.pack("<QI", 7, masked)  # the framing, by hand
  offsets, lengths = tfrecord.index(path)
  np.testing.assert_array_equal(lengths, [0, 7, 300, 4099])
  np.testing.assert_array_equal(offsets, [12, 12 + 16, 12 + 16 + 7 + 16, 12 + 16 + 7 + 16 + 300 + 16])
  assert [tfrecord.read(path, o, n) for o, n in zip(offsets, lengths)] == records


def _pil_decode(jpeg: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(jpeg)) as image:
    return np.asarray(image)


def test_both_formats_read_the_generators_examples(prepared):
  shapes = set()
  for split, num in (("train", NUM_TRAIN), ("validation", NUM_VAL)):
    expected = tfds_testing.tiny_imagenet_examples(split, num)
    assert len({e["label"] for e in expected}) > num // 2  # labels spread over the 1000 classes
    for file_format, data_dir in prepared.items():
      source = tfds.data_source(f"tfds:{tfds_testing.NAME}:{split}", data_dir=data_dir, keys=None)
      assert source.file_format == file_format and len(source) == num and source.num_classes == 1000
      assert isinstance(source._source, tfds.TfRecordSplit) == (file_format == "tfrecord")
      for i, want in enumerate(expected):  # the generator's order, shards and all
        got = source[i]
        assert got["file_name"] == want["file_name"].encode() and got["label"] == want["label"]
        image = _pil_decode(want["image"])
        assert got["image"].dtype == np.uint8 and image.std() > 20  # real pixels
        np.testing.assert_array_equal(got["image"], image)
        shapes.add(got["image"].shape)
  assert len(shapes) > 20 and all(s[2] == 3 for s in shapes)  # varied sizes, RGB
  assert {e["image"][:3] for e in tfds_testing.tiny_imagenet_examples("train", NUM_TRAIN)} == {b"\xff\xd8\xff"}

  # split slices across shard boundaries (8 records a shard), the same in both formats; the source pickles
  sliced = {f: tfds.data_source(f"tfds:{tfds_testing.NAME}:train[5:19]", data_dir=d) for f, d in prepared.items()}
  assert len(sliced["tfrecord"]) == len(sliced["array_record"]) == 14
  labels = [e["label"] for e in tfds_testing.tiny_imagenet_examples("train", NUM_TRAIN)[5:19]]
  for source in sliced.values():
    assert [int(source[i]["label"]) for i in range(14)] == labels
    assert int(source[-1]["label"]) == labels[-1]
  revived = pickle.loads(pickle.dumps(sliced["tfrecord"]))
  np.testing.assert_array_equal(revived[13]["image"], sliced["array_record"][13]["image"])
  with pytest.raises(IndexError):
    sliced["tfrecord"]._source[14]


def test_make_iterator_batches_and_data_dir_order(prepared, monkeypatch, tmp_path):
  spec = "decode|resize(16)|flip_lr|value_range(-1, 1)"
  examples = tfds_testing.tiny_imagenet_examples("train", NUM_TRAIN)
  order = np.random.default_rng((pipeline._ORDER_SALT, 5, 0)).permutation(NUM_TRAIN)
  ops = transforms.parse(spec)
  batches = {}
  for file_format, data_dir in prepared.items():
    it = pipeline.make_iterator(f"tfds:{tfds_testing.NAME}:train", data_dir=data_dir, batch_size=8, seed=5,
                                preprocess=spec, num_threads=2)
    batches[file_format] = [next(it) for _ in range(2)]
  for k, batch in enumerate(batches["tfrecord"]):
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
    indices = order[8 * k:8 * k + 8]
    np.testing.assert_array_equal(batch["label"], [examples[i]["label"] for i in indices])
    want = [ops({"image": _pil_decode(examples[i]["image"]), "label": examples[i]["label"]},
                np.random.default_rng((pipeline._EXAMPLE_SALT, 5, 0, int(i))))["image"] for i in indices]
    np.testing.assert_allclose(batch["image"], np.stack(want), atol=1e-6)
    assert batch["image"].std() > 0.1
    for key in ("image", "label"):
      np.testing.assert_array_equal(batch[key], batches["array_record"][k][key])

  # where the dataset is looked for: data_dir, else $TFDS_DATA_DIR
  monkeypatch.setenv("TFDS_DATA_DIR", prepared["tfrecord"])
  assert tfds.data_dirs() == [prepared["tfrecord"]]
  assert pipeline.get_source(f"tfds:{tfds_testing.NAME}", "validation").file_format == "tfrecord"
  source = pipeline.get_source(f"tfds:{tfds_testing.NAME}", "validation", data_dir=prepared["array_record"])
  assert source.file_format == "array_record" and len(source) == NUM_VAL
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  # config.data.data_dir reaches the source through the classifier task
  config = ml_collections.ConfigDict(dict(
      data=dict(name=f"tfds:{tfds_testing.NAME}", data_dir=prepared["tfrecord"], val_split="validation"),
      model=dict(image_size=16)))
  source = classifier.source(config, "val")
  assert source.file_format == "tfrecord" and len(source) == NUM_VAL
  assert source[3]["label"] == tfds_testing.tiny_imagenet_examples("validation", NUM_VAL)[3]["label"]


def test_missing_dataset_unprepared_dataset_and_unknown_split(prepared, tmp_path, monkeypatch):
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  with pytest.raises(ValueError) as e:
    tfds.data_source("tfds:no_such_dataset_tokax:train", data_dir=empty)
  message = str(e.value)
  assert "tfds:no_such_dataset_tokax: not found" in message and empty in message
  assert f"tfds build no_such_dataset_tokax --data_dir={empty} --file_format=array_record" in message

  with pytest.raises(ValueError) as e:
    pipeline.make_iterator("tfds:imagenet2012:train", data_dir=empty, batch_size=4)
  message = str(e.value)
  assert "tfds:imagenet2012: not prepared" in message and os.path.join(empty, "imagenet2012") in message
  assert f"tfds build imagenet2012 --data_dir={empty} --file_format=array_record" in message
  assert os.path.join(empty, "downloads", "manual") in message and "ILSVRC2012_img_train.tar" in message

  monkeypatch.setenv("TFDS_DATA_DIR", empty)  # no data_dir: $TFDS_DATA_DIR is searched and named
  with pytest.raises(ValueError, match=f"searched \\['{empty}'\\]"):
    tfds.data_source("tfds:imagenet2012:validation")

  with pytest.raises(ValueError) as e:
    tfds.data_source(f"tfds:{tfds_testing.NAME}:test", data_dir=prepared["tfrecord"])
  assert "no split 'test'; it has ['train', 'validation']" in str(e.value)
  with pytest.raises(ValueError, match="it has \\['train', 'validation'\\]"):
    tfds.data_source(f"tfds:{tfds_testing.NAME}:train+val", data_dir=prepared["array_record"])
  assert tfds.parse_name("tfds:imagenet2012:5.1.0:validation") == ("imagenet2012:5.1.0", "validation")
  assert tfds.parse_name("tfds:imagenet2012", "train[:99%]") == ("imagenet2012", "train[:99%]")


def test_corrupted_tfrecord_shards_name_the_file(prepared, tmp_path):
  data_dir = tmp_path / "copy"
  shutil.copytree(prepared["tfrecord"], data_dir)
  shard_dir = data_dir / tfds_testing.NAME / "1.0.0"
  shard = [str(shard_dir / f"{tfds_testing.NAME}-train.tfrecord-{k:05d}-of-00003") for k in range(3)]
  name = f"tfds:{tfds_testing.NAME}:train"
  clean = tfds.data_source(name, data_dir=str(data_dir))
  first_of_shard1, clean_record = clean[8], clean._source.record(10)

  offsets, lengths = tfrecord.index(shard[1])
  blob = bytearray(open(shard[1], "rb").read())
  blob[int(offsets[2] + lengths[2] // 2)] ^= 0x55  # a flipped bit pattern inside record 2's data
  open(shard[1], "wb").write(bytes(blob))
  source = tfds.data_source(name, data_dir=str(data_dir))
  np.testing.assert_array_equal(source[8]["image"], first_of_shard1["image"])  # the shard's other records read
  data_crc = f"{re.escape(shard[1])}: the data CRC of the record at byte"
  with pytest.raises(tfrecord.CorruptRecordError, match=data_crc):
    source[10]
  unchecked = tfds.data_source(name, data_dir=str(data_dir), verify_crc=False)._source.record(10)
  assert unchecked != clean_record and len(unchecked) == len(clean_record)
  assert sum(a != b for a, b in zip(unchecked, clean_record)) == 1

  blob = bytearray(open(shard[2], "rb").read())
  blob[0] ^= 0x01  # the first record's length
  open(shard[2], "wb").write(bytes(blob))
  length_crc = f"{re.escape(shard[2])}: the length CRC of the record at byte 0 does not match"
  with pytest.raises(ValueError, match=length_crc):
    source[16]

  open(shard[0], "r+b").truncate(os.path.getsize(shard[0]) - 10)
  with pytest.raises(ValueError, match=f"{re.escape(shard[0])}: the record at byte \\d+ .* runs past the end"):
    source[0]
  open(shard[0], "wb").close()  # an emptied shard
  with pytest.raises(ValueError, match=f"{re.escape(shard[0])}: holds 0 records but dataset_info.json says 8"):
    tfds.data_source(name, data_dir=str(data_dir))[1]
