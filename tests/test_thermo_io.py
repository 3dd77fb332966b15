"""Reading sequences in every supported format, and clear errors (exit code 2) for bad input."""

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from test_thermo_helpers import run_cli
from vinspect.errors import BadInputError
from vinspect.thermo.io import load_sequence

RNG = np.random.default_rng(0)
SEQ = (RNG.random((10, 12, 16)) * 1000 + 100).astype(np.uint16)


def test_npy_npz_h5_mat_and_folder_give_the_same_frames(tmp_path):
    from scipy.io import savemat

    np.save(tmp_path / "s.npy", SEQ)
    np.savez(tmp_path / "s.npz", frames=SEQ, fps=25.0)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("data/thermo", data=SEQ).attrs["frame_rate"] = 50.0
    savemat(tmp_path / "s.mat", {"seq": np.moveaxis(SEQ, 0, 2), "fps": 30.0})  # MATLAB order (rows, cols, frames)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, fr in enumerate(SEQ):  # names that sort wrongly as plain strings: frame_2 < frame_10
        Image.fromarray(fr).save(folder / f"frame_{i + 1}.png")
    (folder / "sequence.json").write_text(json.dumps({"fps": 10}))
    got = {p: load_sequence(tmp_path / p) for p in ("s.npy", "s.npz", "s.h5", "s.mat", "frames")}
    for name, s in got.items():
        np.testing.assert_array_equal(s.frames, SEQ.astype(float), err_msg=name)
    assert [got[p].fps for p in ("s.npy", "s.npz", "s.h5", "s.mat", "frames")] == [None, 25.0, 50.0, 30.0, 10.0]
    assert load_sequence(tmp_path / "s.npy", fps=7).fps == 7.0


def test_eight_bit_frames(tmp_path):
    for i in range(9):
        Image.fromarray(np.full((6, 5), 10 * i, np.uint8)).save(tmp_path / f"{i:03d}.bmp")
    s = load_sequence(tmp_path)
    assert s.frames.shape == (9, 6, 5) and s.frames[8, 0, 0] == 80


@pytest.mark.parametrize("array,message", [
    (np.zeros((12, 16)), "expected a 3-D array (frames, height, width), got shape (12, 16)"),
    (np.zeros((1, 12, 16)), "a single frame"),
    (np.zeros((3, 12, 16)), "only 3 frames"),
    (np.zeros((10, 12, 16, 3)), "expected a 3-D array"),
    (np.array(["a"] * 8), "expected a numeric array"),
])
def test_bad_arrays_are_refused(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(BadInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_sequence(tmp_path / "bad.npy")


def test_nans_are_refused_with_their_frame(tmp_path):
    a = SEQ.astype(float)
    a[4, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", a)
    with pytest.raises(BadInputError, match=r"1 NaN or infinite values \(first in frame 4\)"):
        load_sequence(tmp_path / "nan.npy")


def test_folder_with_mismatched_frame_sizes_names_the_file(tmp_path):
    for i in range(9):
        size = (16, 12) if i != 6 else (15, 12)
        Image.fromarray(np.zeros(size[::-1], np.uint16)).save(tmp_path / f"f{i:02d}.png")
    with pytest.raises(BadInputError, match=r"f06.png: frame size 15x12 differs from the first frame f00.png"):
        load_sequence(tmp_path)


def test_colour_frames_and_empty_folders_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no image frames"):
        load_sequence(tmp_path / "empty")
    (tmp_path / "rgb").mkdir()
    for i in range(9):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb" / f"{i}.png")
    with pytest.raises(BadInputError, match="colour image"):
        load_sequence(tmp_path / "rgb")


@pytest.mark.parametrize("make,message", [
    (lambda p: np.save(p / "x.npy", np.zeros((12, 16))), "expected a 3-D array"),
    (lambda p: np.save(p / "x.npy", np.zeros((1, 12, 16))), "a single frame"),
    (lambda p: np.save(p / "x.npy", np.full((10, 12, 16), np.nan)), "NaN"),
    (lambda p: (p / "x.txt").write_text("not a sequence"), "unsupported file type"),
    (lambda p: (p / "x.npy").write_bytes(b"garbage"), "not a readable .npy"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, make, message):
    make(tmp_path)
    target = next(tmp_path.iterdir())
    code, out, err = run_cli(["thermo", "analyze", target, "--out", tmp_path / "o", "-q"], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_mismatched_folder_and_missing_file_exit_2(tmp_path, capsys):
    for i in range(9):
        Image.fromarray(np.zeros((12, 16 if i else 17), np.uint8)).save(tmp_path / f"{i}.png")
    code, _, err = run_cli(["thermo", "analyze", tmp_path, "--out", tmp_path / "o", "-q"], capsys)
    assert code == 2 and "differs from the first frame" in err
    code, _, err = run_cli(["thermo", "analyze", tmp_path / "nope.npy", "-q"], capsys)
    assert code == 2 and "no such file" in err
    code, _, err = run_cli(["thermo", "evaluate", tmp_path / "0.png", "--out", tmp_path / "o", "-q"], capsys)
    assert code == 2 and err.count("\n") == 1
