"""Image data sets read from local files: CIFAR-10 pickles (refusing code in them), MNIST and
Fashion-MNIST idx files, StackedMNIST, image folders and LMDB sets. Each test writes a tiny
file in the real format and checks shapes, [0, 1] values, labels and the error paths."""

import gzip
import io
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from vaebm_fast._requirements import MissingExtraError
from vaebm_fast.data import (
    DataFileNotFoundError,
    UnsafePickleError,
    batches,
    load_cifar10,
    load_fashion_mnist,
    load_image_folder,
    load_lmdb_images,
    load_mnist,
    load_stacked_mnist,
    make_dataset,
    read_idx,
)

Image = pytest.importorskip("PIL.Image")


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_levels(count, offset):
    """uint8 [count, 3072]: image i has red = offset + i, green = 100 + ..., blue = 200 + ..."""
    rows = np.empty((count, 3, 1024), dtype=np.uint8)
    for i in range(count):
        rows[i] = np.array([offset + i, 100 + offset + i, 200 + offset + i])[:, None]
    return rows.reshape(count, 3072)


def write_cifar(root, per_batch=2, protocol=2, byte_keys=True):
    """A cifar-10-batches-py folder like the official one (Python 2 wrote byte-string keys)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        data = cifar_levels(per_batch, offset=10 * b)
        batch = {"batch_label": f"batch {b}", "labels": [(b + i) % 10 for i in range(per_batch)],
                 "data": data, "filenames": [f"img{i}.png" for i in range(per_batch)]}
        if byte_keys:
            batch = {k.encode(): (v.encode() if isinstance(v, str) else v)
                     for k, v in batch.items()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return folder


def test_cifar10_reads_the_pickle_batches_in_order(tmp_path):
    write_cifar(tmp_path)
    images, labels = load_cifar10(tmp_path, "train", return_labels=True)
    assert images.shape == (10, 3, 32, 32) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    # Batch b, image i: red plane offset + i, then green, then blue (the row layout of the file).
    for b in range(5):
        for i in range(2):
            expected = torch.tensor([10 * b + i, 100 + 10 * b + i, 200 + 10 * b + i]) / 255.0
            assert torch.equal(images[2 * b + i, :, 5, 7], expected.float())
            assert torch.equal(images[2 * b + i].amin(dim=(1, 2)), expected.float())
    assert labels.tolist() == [(b + i) % 10 for b in range(5) for i in range(2)]
    assert labels.dtype == torch.int64

    test = load_cifar10(tmp_path / "cifar-10-batches-py", "test")  # the folder itself works too
    assert test.shape == (2, 3, 32, 32)
    assert float(test[1, 0, 0, 0]) == pytest.approx(51 / 255)


def test_cifar10_reads_python3_pickles_of_any_protocol(tmp_path):
    write_cifar(tmp_path, protocol=pickle.HIGHEST_PROTOCOL, byte_keys=False)
    assert load_cifar10(tmp_path, "test").shape == (2, 3, 32, 32)


def test_cifar10_reads_arrays_pickled_by_numpy_1(tmp_path):
    """The official files name NumPy 1's module numpy.core.multiarray (NumPy 2: numpy._core)."""
    folder = write_cifar(tmp_path)
    batch = {b"data": cifar_levels(3, offset=40), b"labels": [7, 8, 9]}
    raw = pickle.dumps(batch, protocol=2)
    assert b"numpy._core.multiarray\n" in raw  # the GLOBAL opcode spells module and name
    (folder / "test_batch").write_bytes(
        raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    images, labels = load_cifar10(tmp_path, "test", return_labels=True)
    assert labels.tolist() == [7, 8, 9]
    assert float(images[2, 1, 0, 0]) == pytest.approx(142 / 255)


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["system", "eval", "object-array"])
def test_cifar10_refuses_a_pickle_that_would_run_code(tmp_path, payload):
    folder = write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    if payload == "system":
        evil = {b"data": RunsCode(marker), b"labels": []}
    elif payload == "eval":
        class Eval:
            def __reduce__(self):
                return (eval, (f"open({str(marker)!r}, 'w').close()",))
        evil = {b"data": Eval(), b"labels": []}
    else:  # an object array would unpickle arbitrary objects into the data
        evil = {b"data": np.array([RunsCode(marker)], dtype=object), b"labels": [0]}
    (folder / "data_batch_2").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(UnsafePickleError, match="refused"):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar10_missing_file_says_what_to_put_where(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataFileNotFoundError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert str(folder / "data_batch_3") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert f"extract it into {tmp_path}" in message
    with pytest.raises(DataFileNotFoundError, match="test_batch"):
        load_cifar10(tmp_path / "nowhere", "test")


def test_cifar10_rejects_a_batch_of_the_wrong_shape_and_a_bad_split(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps(
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(ValueError, match=r"is not a CIFAR-10 batch.*uint8 \[n, 3072\]"):
        load_cifar10(tmp_path, "test")
    with pytest.raises(ValueError, match="split must be one of 'train', 'test'"):
        load_cifar10(tmp_path, "valid")


def test_cifar10_feeds_batches_and_make_dataset(tmp_path):
    write_cifar(tmp_path)
    stream = batches(make_dataset("CIFAR-10", root=tmp_path), 4, torch.Generator().manual_seed(0))
    batch = next(stream)
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == torch.float32


# ----------------------------------------------------------------------------- MNIST idx


def idx_bytes(array):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def write_mnist(root, split_prefix, images, labels, gz):
    root.mkdir(parents=True, exist_ok=True)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        name = root / f"{split_prefix}-{kind}-ubyte"
        data = idx_bytes(array)
        if gz:
            name.with_name(name.name + ".gz").write_bytes(gzip.compress(data))
        else:
            name.write_bytes(data)


def digit_images(count, size=28):
    """uint8 [count, size, size]: image i is a ramp along the row index plus 3 i."""
    ramp = np.arange(size, dtype=np.uint8)[None, :, None] * 9
    return (ramp + 3 * np.arange(count, dtype=np.uint8)[:, None, None]).repeat(size, axis=2)


@pytest.mark.parametrize("loader", [load_mnist, load_fashion_mnist])
def test_mnist_reads_gzipped_and_plain_idx_files(tmp_path, loader):
    train, test = digit_images(6), digit_images(3)[::-1]
    write_mnist(tmp_path, "train", train, [3, 1, 4, 1, 5, 9], gz=True)
    write_mnist(tmp_path, "t10k", test, [2, 6, 5], gz=False)
    images, labels = loader(tmp_path, return_labels=True)
    assert images.shape == (6, 1, 28, 28) and images.dtype == torch.float32
    assert torch.equal(images, torch.from_numpy(train).float().unsqueeze(1) / 255)
    assert labels.tolist() == [3, 1, 4, 1, 5, 9] and labels.dtype == torch.int64
    assert float(images.max()) <= 1.0 and float(images.min()) >= 0.0
    test_images = loader(tmp_path, "test")
    assert torch.equal(test_images[:, 0], torch.from_numpy(test.copy()).float() / 255)


def test_read_idx_recognises_gzip_by_content(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(gzip.compress(idx_bytes(array)))
    assert np.array_equal(read_idx(tmp_path / "a"), array)


def test_mnist_errors_name_the_file(tmp_path):
    with pytest.raises(DataFileNotFoundError, match="folder .*nowhere not found"):
        load_mnist(tmp_path / "nowhere")
    write_mnist(tmp_path, "train", digit_images(2), [0, 1], gz=False)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataFileNotFoundError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert "train-labels-idx1-ubyte" in message and "ossci-datasets" in message
    with pytest.raises(DataFileNotFoundError, match="fashion-mnist"):
        load_fashion_mnist(tmp_path)

    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes([0, 1])[:-1])  # truncated
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 12)
    with pytest.raises(ValueError, match="not an idx file of unsigned bytes"):
        load_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes([0, 1, 2]))
    with pytest.raises(ValueError, match="not images .* with N labels"):
        load_mnist(tmp_path)


# ----------------------------------------------------------------------------- StackedMNIST


def test_stacked_mnist_stacks_three_seeded_digits_per_image(tmp_path):
    count = 10
    digits = np.stack([np.full((28, 28), 20 * i, np.uint8) for i in range(count)])
    digit_labels = [(7 * i) % 10 for i in range(count)]
    write_mnist(tmp_path, "train", digits, digit_labels, gz=True)
    images, labels = load_stacked_mnist(tmp_path, seed=1, return_labels=True)
    assert images.shape == (2 * count, 3, 28, 28) and images.dtype == torch.float32
    # Each channel is a constant image 20 i / 255: recover which digit i sits in each channel.
    which = (images[:, :, 0, 0] * 255 / 20).round().long()  # [20, 3]
    assert torch.equal(images, images[:, :, :1, :1].expand_as(images))
    for channel in range(3):  # two permutations end to end: every digit twice per channel
        assert sorted(which[:count, channel].tolist()) == list(range(count))
        assert sorted(which[count:, channel].tolist()) == list(range(count))
    lookup = torch.tensor(digit_labels)
    assert torch.equal(labels, 100 * lookup[which[:, 0]] + 10 * lookup[which[:, 1]]
                       + lookup[which[:, 2]])
    assert int(labels.max()) < 1000

    assert torch.equal(load_stacked_mnist(tmp_path, seed=1), images)
    assert not torch.equal(load_stacked_mnist(tmp_path, seed=2), images)


# ----------------------------------------------------------------------------- image folder


def test_image_folder_reads_recursively_converts_resizes_and_crops(tmp_path):
    wide = np.zeros((4, 8, 3), np.uint8)  # H 4, W 8: three bands of colour across
    wide[:, :2], wide[:, 2:6], wide[:, 6:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "a_wide.png")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "sub" / "deeper" / "b.PNG")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba).save(tmp_path / "sub" / "c.png")
    Image.fromarray(np.full((6, 6, 3), (30, 60, 90), np.uint8)).save(tmp_path / "d.jpg",
                                                                      quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    Image.fromarray(wide).save(tmp_path / ".hidden" / "skipped.png")

    images = load_image_folder(tmp_path, 4)
    assert images.shape == (4, 3, 4, 4) and images.dtype == torch.float32  # sorted paths:
    # a_wide.png, d.jpg, sub/c.png, sub/deeper/b.PNG
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    # The wide image keeps its height 4 and loses two columns each side: only green is left.
    assert torch.equal(images[0], torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 4, 4))
    assert torch.allclose(images[1], torch.tensor([30, 60, 90]).float().view(3, 1, 1) / 255,
                          atol=4 / 255)  # JPEG is lossy, resized 6 -> 4
    assert torch.equal(images[2], torch.tensor([200 / 255, 0, 0]).view(3, 1, 1).expand(3, 4, 4))
    assert torch.allclose(images[3], torch.full((3, 4, 4), 128 / 255))  # grey -> RGB, 8 -> 4


def test_image_folder_errors(tmp_path, monkeypatch):
    with pytest.raises(DataFileNotFoundError, match="image folder .*missing not found"):
        load_image_folder(tmp_path / "missing", 8)
    with pytest.raises(DataFileNotFoundError, match="no image files"):
        load_image_folder(tmp_path, 8)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot decode image .*broken\.png"):
        load_image_folder(tmp_path, 8)
    with pytest.raises(ValueError, match="size must be > 0"):
        load_image_folder(tmp_path, 0)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingExtraError, match=r"needs Pillow.*vaebm_fast\[images\]"):
        load_image_folder(tmp_path, 8)


# ----------------------------------------------------------------------------- LMDB


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_lmdb(path, values):
    lmdb = pytest.importorskip("lmdb")  # in the [test] extra; the tests skip without it
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key, value)
    env.close()


def colour_square(index, side):
    return np.full((side, side, 3), (index, 2 * index, 3 * index), np.uint8)


def test_lmdb_reads_encoded_images_in_key_order(tmp_path):
    # Inserted out of order (LMDB sorts keys as bytes: b"10" < b"2"); read back by index.
    write_lmdb(tmp_path / "train.lmdb",
               {str(i).encode(): png_bytes(colour_square(i, 6)) for i in (10, 2, 0, 1, 3, 4, 5,
                                                                           6, 7, 8, 9)})
    images = load_lmdb_images(tmp_path)
    assert images.shape == (11, 3, 6, 6) and images.dtype == torch.float32
    for i in range(11):
        assert torch.equal(images[i, :, 3, 3], torch.tensor([i, 2 * i, 3 * i]).float() / 255)
    assert load_lmdb_images(tmp_path / "train.lmdb", size=4).shape == (11, 3, 4, 4)


def test_lmdb_reads_raw_square_pixels(tmp_path):
    write_lmdb(tmp_path / "validation.lmdb",
               {str(i).encode(): colour_square(i + 1, 5).tobytes() for i in range(3)})
    images = load_lmdb_images(tmp_path, "validation", encoded=False)
    assert images.shape == (3, 3, 5, 5)
    assert torch.equal(images[2, :, 0, 0], torch.tensor([3.0, 6.0, 9.0]) / 255)
    assert load_lmdb_images(tmp_path, "validation", size=2, encoded=False).shape == (3, 3, 2, 2)
    with pytest.raises(ValueError, match="pass encoded=False"):
        load_lmdb_images(tmp_path, "validation")  # raw pixels are not an image file


def test_lmdb_errors(tmp_path):
    pytest.importorskip("lmdb")
    with pytest.raises(DataFileNotFoundError, match=r"train\.lmdb.*data\.mdb not found"):
        load_lmdb_images(tmp_path)
    write_lmdb(tmp_path / "train.lmdb", {b"0": png_bytes(colour_square(1, 4)),
                                          b"2": png_bytes(colour_square(2, 4))})
    with pytest.raises(ValueError, match="has no key b'1'"):
        load_lmdb_images(tmp_path)
    write_lmdb(tmp_path / "validation.lmdb", {b"0": png_bytes(colour_square(1, 4)),
                                               b"1": png_bytes(colour_square(2, 5))})
    with pytest.raises(ValueError, match="pass size= to resize them all"):
        load_lmdb_images(tmp_path, "validation")
    write_lmdb(tmp_path / "odd.lmdb", {b"0": b"\x00" * 10})
    with pytest.raises(ValueError, match="not the 3 H\\^2 of a raw square RGB image"):
        load_lmdb_images(tmp_path / "odd.lmdb", encoded=False)


def test_lmdb_missing_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(MissingExtraError, match=r"needs lmdb.*pip install 'vaebm_fast\[images\]'"):
        load_lmdb_images(tmp_path)
