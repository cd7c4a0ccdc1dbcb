"""Dataset readers: both on-disk layouts, error messages, query/gallery split, torch dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.synth import SynthConfig, generate_dataset
from models.training.data import (
    BlockImageDataset,
    BlockImageRecord,
    DatasetError,
    read_dataset,
    split_query_gallery,
)


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 8), (value, value, value)).save(path)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255.0


def _metadata_dataset(root: Path, header: str, rows: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def test_metadata_layout_with_blocks_splits_and_extra_columns(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _image(tmp_path / "img" / name, 10)
    root = _metadata_dataset(
        tmp_path,
        "pallet_id,path,camera,frame,block,split,station",
        [
            "P1,img/a.jpg,cam_1,7,0,train,north",
            "P1,img/b.jpg,cam_2,8,5,test,south",
            f"P2,{tmp_path / 'img' / 'c.jpg'},cam_1,9,,test,north",
        ],
    )
    captures = read_dataset(root)
    assert [c.identity for c in captures] == ["P1/0", "P1/5", "P2"]
    assert captures[1] == BlockImageRecord(
        path=tmp_path / "img" / "b.jpg",
        identity="P1/5",
        pallet="P1",
        position=5,
        camera="cam_2",
        frame="8",
        split="test",
    )
    assert captures[0].attributes == {"station": "north"}
    assert captures[2].position is None
    assert [c.frame for c in read_dataset(root, split="test")] == ["8", "9"]
    with pytest.raises(DatasetError, match="no captures of split 'val'"):
        read_dataset(root, split="val")


def test_metadata_errors_name_the_problem(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg", 10)
    root = _metadata_dataset(tmp_path / "cols", "pallet_id,path,frame", ["P1,a.jpg,1"])
    with pytest.raises(DatasetError, match=r"lacks required column\(s\) camera"):
        read_dataset(root)
    root = _metadata_dataset(tmp_path / "files", "pallet_id,path,camera,frame", ["P1,missing.jpg,cam_1,1"])
    with pytest.raises(DatasetError, match=r"1 of 1 image\(s\) .* do not exist .*missing.jpg"):
        read_dataset(root)
    _image(tmp_path / "block" / "a.jpg", 10)
    root = _metadata_dataset(
        tmp_path / "block", "pallet_id,path,camera,frame,block", ["P1,a.jpg,cam_1,1,left"]
    )
    with pytest.raises(DatasetError, match="block must be an integer"):
        read_dataset(root)
    root = _metadata_dataset(tmp_path / "empty", "pallet_id,path,camera,frame", ["P1,a.jpg,,1"])
    with pytest.raises(DatasetError, match="empty value in column"):
        read_dataset(root)
    with pytest.raises(DatasetError, match="not a directory"):
        read_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="has no 'split' column"):
        read_dataset(_split_less(tmp_path), split="test")


def _split_less(tmp_path: Path) -> Path:
    _image(tmp_path / "nosplit" / "a.jpg", 10)
    return _metadata_dataset(tmp_path / "nosplit", "pallet_id,path,camera,frame", ["P1,a.jpg,cam_1,1"])


def test_folder_layout_parses_camera_and_frame(tmp_path: Path) -> None:
    _image(tmp_path / "32965" / "all__pf_100_cam_1_1009.jpg", 10)
    _image(tmp_path / "32965" / "all__pf_100_cam_2_1007.jpg", 20)
    _image(tmp_path / "40001" / "x_cam_2.png", 30)
    (tmp_path / "40001" / "notes.txt").write_text("not an image")
    captures = read_dataset(tmp_path)
    assert [(c.identity, c.camera, c.frame, c.position) for c in captures] == [
        ("32965", "cam_1", "1009", None),
        ("32965", "cam_2", "1007", None),
        ("40001", "cam_2", "x_cam_2", None),
    ]


def test_folder_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset found"):
        read_dataset(tmp_path)
    _image(tmp_path / "7" / "frame_12.jpg", 10)
    with pytest.raises(DatasetError, match=r"no 'cam_<n>' in their file name.*7/frame_12.jpg"):
        read_dataset(tmp_path)


def _capture(identity: str, camera: str) -> BlockImageRecord:
    return BlockImageRecord(Path(f"{identity}-{camera}.jpg"), identity, identity, None, camera, "0")


def test_split_query_gallery_by_camera() -> None:
    captures = [
        _capture("a", "cam_2"),
        _capture("a", "cam_1"),
        _capture("b", "cam_3"),
        _capture("b", "cam_1"),
    ]
    query, gallery = split_query_gallery(captures)
    assert [c.camera for c in gallery] == ["cam_1", "cam_1"]
    assert [c.camera for c in query] == ["cam_2", "cam_3"]
    query, gallery = split_query_gallery(captures, query_camera="cam_1")
    assert [c.camera for c in query] == ["cam_1", "cam_1"]
    assert {c.camera for c in gallery} == {"cam_2", "cam_3"}
    with pytest.raises(DatasetError, match="not in dataset cameras"):
        split_query_gallery(captures, query_camera="cam_9")
    with pytest.raises(DatasetError, match="at least two cameras"):
        split_query_gallery(captures[1:2])


def test_capture_dataset_labels_follow_sorted_identities(tmp_path: Path) -> None:
    captures = []
    for index, (identity, camera) in enumerate([("b", "cam_2"), ("a", "cam_1"), ("b", "cam_1")]):
        path = tmp_path / f"{index}.png"
        _image(path, 40 * index)
        captures.append(BlockImageRecord(path, identity, identity, None, camera, str(index)))
    dataset = BlockImageDataset(captures, _to_tensor)
    assert len(dataset) == 3
    assert dataset.identities == ["a", "b"]
    assert dataset.labels == [1, 0, 1]
    image, label, camera_index = dataset[2]
    assert (label, camera_index) == (1, 0)
    assert image.shape == (3, 8, 12)
    assert torch.allclose(image, torch.full_like(image, 80 / 255.0))
    with pytest.raises(DatasetError):
        BlockImageDataset([], _to_tensor)


def test_reads_what_the_generator_writes(tmp_path: Path) -> None:
    generate_dataset(
        tmp_path, SynthConfig(pallets=1, cameras=2, frames=1, width=48, height=30), progress=False
    )
    captures = read_dataset(tmp_path)
    assert len(captures) == 12
    assert {c.identity for c in captures} == {f"P000000/{position}" for position in range(6)}
    assert captures[0].attributes["aged"] == "0"
    query, gallery = split_query_gallery(captures)
    assert {c.camera for c in gallery} == {"cam_1"} and len(query) == 6
