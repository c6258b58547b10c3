"""Real-dataset loaders on tiny fixture copies of each official format.

Every fixture is written here (PIL images, PyAV videos with and without audio,
soundfile WAVs, CSV/JSON/text index files); nothing is downloaded. Small input sizes
keep the file fast: the checks are about parsing, labels, shapes, the fixed evaluation
frame, normalisation and error messages, not about the default sizes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from mpsl_flwr.cli import partition_plot as plot_main
from mpsl_flwr.config import RunConfig, load_pyproject_config
from mpsl_flwr.data import loaders
from mpsl_flwr.data.audio import centred_window, fbank, silence, window_samples
from mpsl_flwr.data.errors import DatasetError, DatasetFormatError, DatasetNotFoundError
from mpsl_flwr.data.images import normalization
from mpsl_flwr.data.loaders.kinetics import KINETICS_SOUNDS
from mpsl_flwr.data.registry import (
    client_partition,
    dataset_info,
    dataset_names,
    load_split,
    partitioner,
)
from mpsl_flwr.data.text import tokenize
from mpsl_flwr.data.video import has_audio, read_clip

SIZE = 32  # image-size for the fixtures (a multiple of the 16-pixel patch)
FRAMES = 48  # audio-frames for the fixtures (0.49 s)
RED, BLUE = (250, 10, 10), (10, 10, 250)


# ---------------------------------------------------------------- fixture writers


def write_image(path: Path, color=RED, size=(48, 36)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_video(path: Path, audio: bool = True, frames: int = 12, fps: int = 6, hz=440.0):
    """Frame i is grey level 20*i (so the middle frame, i=6, is ~120); a sine track."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = 48, 32, "yuv420p"
        sound = None
        if audio:
            sound = out.add_stream("mp3" if path.suffix == ".avi" else "aac", rate=22050)
            sound.layout = "stereo"
        for i in range(frames):
            img = np.full((32, 48, 3), 20 * i, np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(video.encode())
        if sound is not None:
            n = 22050 * frames // fps
            wave = (0.5 * np.sin(2 * np.pi * hz * np.arange(n) / 22050)).astype(np.float32)
            for s in range(0, n, 1152):
                chunk = np.ascontiguousarray(np.stack([wave[s : s + 1152]] * 2))
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 22050, s
                out.mux(sound.encode(frame))
            out.mux(sound.encode())
    return path


def write_wav(path: Path, seconds: float = 2.0, rate: int = 8000, hz: float = 1000.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(str(path), 0.3 * np.sin(2 * np.pi * hz * t), rate)
    return path


def write_lines(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def cfg_for(name: str, root: Path, **kw) -> RunConfig:
    return RunConfig(
        dataset=name,
        data_dir=str(root),
        image_size=SIZE,
        audio_frames=FRAMES,
        text_length=16,
        **kw,
    )


def make_cocoqa(root: Path) -> Path:
    for split, rows in {
        "train": [
            ("what is on the table ?", "cat", 9, 0),
            ("how many dogs are there ?", "two", 9, 1),
            ("what is the color of the bus ?", "red", 25, 2),
        ],
        "test": [("what is the man holding ?", "kite", 42, 0), ("what sleeps ?", "cat", 42, 0)],
    }.items():
        for i, name in enumerate(("questions", "answers", "img_ids", "types")):
            write_lines(root / split / f"{name}.txt", [r[i] for r in rows])
    write_image(root / "train2014" / "COCO_train2014_000000000009.jpg", RED)
    write_image(root / "train2014" / "COCO_train2014_000000000025.jpg", BLUE)
    write_image(root / "val2014" / "COCO_val2014_000000000042.jpg", RED)
    return root


def make_t4sa(root: Path) -> Path:
    write_csv(
        root / "raw_tweets_text.csv",
        ["id", "text"],
        [
            ["111", "Happy day, love it! http://t.co/abc"],
            ["222", "two\nlines"],
            ["333", "sad news"],
            ["999", "not in B-T4SA"],
        ],
    )
    write_lines(
        root / "b-t4sa_train.txt",
        ["data/1/1/111-1.jpg 2", "data/1/1/111-2.jpg 2", "data/2/222-1.jpg 1"],
    )
    write_lines(root / "b-t4sa_test.txt", ["data/3/333-1.jpg 0"])
    for rel, color in [("1/1/111-1", RED), ("1/1/111-2", BLUE), ("2/222-1", RED)]:
        write_image(root / "data" / f"{rel}.jpg", color)
    write_image(root / "data" / "3" / "333-1.jpg", BLUE)
    return root


def make_karpathy(root: Path, flickr: bool = False, n_train: int = 2) -> Path:
    images = []
    words = ["dog", "cat", "bus", "tree", "kite", "boat", "bird", "horse"]
    splits = ["train", "restval"] * n_train
    for i in range(n_train + 3):
        split = splits[i] if i < n_train else ("val", "test", "test")[i - n_train]
        name = f"{i}.jpg" if flickr else f"COCO_val2014_{i:012d}.jpg"
        folder = "flickr30k-images" if flickr else "val2014"
        write_image(root / folder / name, RED if i % 2 else BLUE)
        w = words[i % len(words)]
        sentences = [{"raw": f"a {w} number {j} .", "tokens": ["a", w]} for j in range(6)]
        entry = {"filename": name, "split": split, "sentences": sentences, "imgid": i}
        if not flickr:
            entry["filepath"] = folder
        images.append(entry)
    name = "dataset_flickr30k.json" if flickr else "dataset_coco.json"
    (root / name).write_text(json.dumps({"images": images, "dataset": "x"}), encoding="utf-8")
    return root


def make_ucf101(root: Path) -> Path:
    lists = root / "ucfTrainTestlist"
    write_lines(lists / "classInd.txt", ["1 Archery", "2 BandMarching", "3 HandstandPushups"])
    train, test = [], []
    for k, (folder, sound) in enumerate(
        [("Archery", True), ("BandMarching", True), ("HandStandPushups", False)]
    ):
        for g in (1, 2, 3):
            rel = f"{folder}/v_{folder}_g{g:02d}_c01.avi"
            write_video(root / "UCF-101" / rel, audio=sound, hz=300.0 * (k + 1))
            (train if g < 3 else test).append(rel)
    write_lines(lists / "trainlist01.txt", [f"{r} 1" for r in train])
    write_lines(lists / "testlist01.txt", test)
    return root


KINETICS_HEADER = ("label", "youtube_id", "time_start", "time_end", "split")


def make_kinetics(root: Path) -> Path:
    header = KINETICS_HEADER
    write_csv(
        root / "annotations" / "train.csv",
        header,
        [
            ["playing drums", "abc", 10, 20, "train"],
            ["playing drums", "abd", 0, 10, "train"],
            ["singing", "xyz", 5, 15, "train"],
            ["abseiling", "zzz", 0, 10, "train"],
            ["singing", "gone", 0, 10, "train"],
        ],
    )
    write_csv(root / "annotations" / "validate.csv", header, [["singing", "v1", 0, 10, "val"]])
    write_video(root / "train" / "playing drums" / "abc_000010_000020.mp4")
    write_video(root / "train" / "abd_000000_000010.mp4", hz=220.0)
    write_wav(root / "train" / "abd_000000_000010.wav")
    write_video(root / "train" / "singing" / "xyz_000005_000015.mp4")
    write_video(root / "train" / "abseiling" / "zzz_000000_000010.mp4")
    write_video(root / "val" / "singing" / "v1_000000_000010.mp4")
    return root


MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID"]
MELD_HEADER += ["Utterance_ID", "Season", "Episode", "StartTime", "EndTime"]


def meld_row(i, text, emotion, dia, utt):
    return [i, text, "Joey", emotion, "x", dia, utt, 1, 1, "0:0:0,0", "0:0:1,0"]


def make_meld(root: Path) -> Path:
    write_csv(
        root / "train_sent_emo.csv",
        MELD_HEADER,
        [
            meld_row(1, "Oh my God, Iâ€™m so happy!", "joy", 0, 0),
            meld_row(2, "No.", "neutral", 0, 1),
            meld_row(3, "What?", "surprise", 1, 0),
        ],
    )
    write_csv(root / "test_sent_emo.csv", MELD_HEADER, [meld_row(1, "Fine.", "anger", 0, 0)])
    write_video(root / "train_splits" / "dia0_utt0.mp4")
    write_video(root / "train_splits" / "dia0_utt1.mp4", hz=880.0)
    write_video(root / "output_repeated_splits_test" / "dia0_utt0.mp4")
    return root


# ---------------------------------------------------------------- decoding helpers


def test_all_seven_datasets_are_registered():
    real = {"coco-qa", "b-t4sa", "mscoco", "flickr30k", "ucf101", "kinetics-sounds", "meld"}
    assert real <= set(dataset_names())
    assert "synthetic-vqa" in dataset_names()


def test_middle_frame_is_fixed_and_audio_is_read(tmp_path):
    path = write_video(tmp_path / "clip.mp4")
    first, second = read_clip(path), read_clip(path)
    assert np.array_equal(np.asarray(first.frame), np.asarray(second.frame))
    assert abs(float(np.asarray(first.frame).mean()) - 120) < 6  # frame 6 of 12
    assert first.frame_time == pytest.approx(1.0)
    assert first.sample_rate == 22050 and first.audio.ndim == 1
    silent = write_video(tmp_path / "silent.avi", audio=False)
    assert not has_audio(silent) and read_clip(silent).audio is None


def test_audio_window_is_centred_and_clamped():
    wave = np.arange(16_000, dtype=np.float32)  # 1 s at 16 kHz
    n = window_samples(FRAMES)
    mid = centred_window(wave, 16_000, 0.5, FRAMES)
    assert len(mid) == n and mid[0] == 8000 - n // 2
    assert centred_window(wave, 16_000, 0.0, FRAMES)[0] == 0
    assert centred_window(wave, 16_000, 1.0, FRAMES)[-1] == 15_999
    assert len(centred_window(wave[:100], 16_000, 0.0, FRAMES)) == 100
    assert fbank(silence(FRAMES), FRAMES).shape == (FRAMES, 128)


# ---------------------------------------------------------------- V+T classification


def test_cocoqa_parses_questions_answers_and_images(tmp_path):
    cfg = cfg_for("coco-qa", make_cocoqa(tmp_path))
    info = dataset_info(cfg.data)
    assert info.class_names == ("cat", "kite", "red", "two")
    assert info.modalities == ("image", "text") and info.image_size == SIZE
    train, test = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    assert len(train) == 3 and len(test) == 2
    assert train.labels.tolist() == [0, 3, 2] and test.labels.tolist() == [1, 0]
    batch = train.batch([0, 1, 2])
    assert batch["image"].shape == (3, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
    assert torch.equal(batch["text"][0], tokenize(["what is on the table ?"], 16)[0])
    # Normalised with CLIP's mean/std by default: a red JPEG's red channel is high.
    mean, std = normalization("clip", "clip")
    expected_red = (250 / 255 - mean[0]) / std[0]
    assert batch["image"][0, 0].mean().item() == pytest.approx(expected_red, abs=0.1)
    assert torch.equal(batch["image"][0], batch["image"][1])  # same image, two questions
    assert batch["image"][2, 2].mean() > batch["image"][2, 0].mean()  # the blue one


def test_image_norm_key_switches_statistics(tmp_path):
    root = make_cocoqa(tmp_path)
    info = dataset_info(cfg_for("coco-qa", root, image_norm="imagenet").data)
    assert info.image_mean == pytest.approx((0.485, 0.456, 0.406))
    assert dataset_info(RunConfig().data).image_mean == (0.5, 0.5, 0.5)  # built-in data


def test_t4sa_joins_tweet_text_and_cleans_urls(tmp_path):
    cfg = cfg_for("b-t4sa", make_t4sa(tmp_path))
    info = dataset_info(cfg.data)
    assert info.class_names == ("negative", "neutral", "positive")
    train = load_split(cfg.data, "train")
    assert train.labels.tolist() == [2, 2, 1]
    assert train.table.texts == ("Happy day, love it!", "Happy day, love it!", "two lines")
    batch = train.batch([0, 2])
    assert batch["image"].shape == (2, 3, SIZE, SIZE) and batch["text"].shape == (2, 16)
    assert load_split(cfg.data, "test").labels.tolist() == [0]


# ---------------------------------------------------------------- retrieval


@pytest.mark.parametrize("flickr", [False, True])
def test_karpathy_splits_have_five_captions_per_image(tmp_path, flickr):
    name = "flickr30k" if flickr else "mscoco"
    cfg = cfg_for(name, make_karpathy(tmp_path, flickr=flickr))
    info = dataset_info(cfg.data)
    assert info.kind == "retrieval" and info.num_classes == 0
    train, test = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    assert len(train) == 10 and len(test) == 10  # train+restval, test; 'val' left out
    assert train.labels.tolist() == [0] * 5 + [1] * 5
    batch = test.batch(np.arange(10))
    assert torch.equal(batch["label"], torch.tensor([0] * 5 + [1] * 5))
    assert torch.equal(batch["image"][0], batch["image"][4])
    assert not torch.equal(batch["text"][0], batch["text"][1])


@pytest.mark.parametrize("scheme", ["iid", "dirichlet-cluster"])
def test_retrieval_partitions_keep_images_whole(tmp_path, scheme):
    root = make_karpathy(tmp_path, n_train=12)
    cfg = cfg_for(
        "mscoco", root, retrieval_partition=scheme, retrieval_clusters=3, min_partition_size=1
    )
    train = load_split(cfg.data, "train")
    parts = [client_partition(cfg.data, c, 3, seed=cfg.seed) for c in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(train)))
    owners = [set(train.labels[p].tolist()) for p in parts]
    assert not (owners[0] & owners[1]) and not (owners[1] & owners[2])
    if scheme == "iid":
        assert [len(o) for o in owners] == [4, 4, 4]
    proxy = train.partition_labels
    for pair in np.unique(train.labels):  # the pseudo-label is constant per image
        assert len(set(proxy[train.labels == pair].tolist())) == 1


# ---------------------------------------------------------------- V+A, A+T


def test_ucf101_keeps_only_classes_with_audio(tmp_path):
    cfg = cfg_for("ucf101", make_ucf101(tmp_path))
    info = dataset_info(cfg.data)
    assert info.class_names == ("Archery", "BandMarching")
    assert info.modalities == ("image", "audio") and info.audio_frames == FRAMES
    train, test = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    assert train.labels.tolist() == [0, 0, 1, 1] and test.labels.tolist() == [0, 1]
    batch = test.batch([0, 1])
    assert batch["image"].shape == (2, 3, SIZE, SIZE)
    assert batch["audio"].shape == (2, FRAMES, 128) and batch["audio"].dtype == torch.float32
    assert not torch.equal(batch["audio"][0], batch["audio"][1])  # 300 Hz vs 600 Hz
    # The evaluation frame is the middle one (grey ~120), identical on a fresh decode.
    mean, std = normalization("clip", "clip")
    grey = batch["image"][0, 0].mean().item() * std[0] + mean[0]
    assert grey * 255 == pytest.approx(120, abs=8)
    fresh = loaders.load(cfg.data, "test").batch([0, 1])
    assert torch.equal(fresh["image"], batch["image"])
    assert torch.equal(fresh["audio"], batch["audio"])


def test_ucf101_class_list_override_and_silent_video(tmp_path):
    root = make_ucf101(tmp_path)
    write_lines(root / "classes.txt", ["HandstandPushups", "Archery"])
    cfg = cfg_for("ucf101", root)
    assert dataset_info(cfg.data).class_names == ("HandstandPushups", "Archery")
    test = load_split(cfg.data, "test")
    assert test.labels.tolist() == [1, 0]
    silent = test.batch([1])["audio"][0]  # no audio stream: silence, a constant fbank
    assert silent.shape == (FRAMES, 128) and float(silent.std()) < 1e-4


def test_kinetics_sounds_finds_clips_and_uses_sidecar_wav(tmp_path, caplog):
    cfg = cfg_for("kinetics-sounds", make_kinetics(tmp_path))
    info = dataset_info(cfg.data)
    assert info.class_names == KINETICS_SOUNDS and len(KINETICS_SOUNDS) == 31
    assert "1 of 4 train clips" in caplog.text  # 'gone' is listed but absent
    train = load_split(cfg.data, "train")
    drums, singing = KINETICS_SOUNDS.index("playing drums"), KINETICS_SOUNDS.index("singing")
    assert train.labels.tolist() == [drums, drums, singing]
    assert train.table.audio_files[1].suffix == ".wav" and train.table.audio_files[0] is None
    wave, rate = soundfile.read(str(tmp_path / "train" / "abd_000000_000010.wav"))
    expected = fbank(centred_window(wave, rate, 1.0, FRAMES), FRAMES, rate)
    got = train.batch([1])["audio"][0]
    assert torch.allclose(got, expected, atol=2e-2)  # float16 cache
    assert load_split(cfg.data, "test").labels.tolist() == [singing]


def test_meld_reads_utterance_audio_and_text(tmp_path, caplog):
    cfg = cfg_for("meld", make_meld(tmp_path))
    info = dataset_info(cfg.data)
    assert info.modalities == ("audio", "text") and info.num_classes == 7
    assert "1 of 3 train clips" in caplog.text  # dia1_utt0 absent
    train = load_split(cfg.data, "train")
    assert [info.class_names[k] for k in train.labels] == ["joy", "neutral"]
    batch = train.batch([0, 1])
    assert set(batch) == {"audio", "text", "label"}
    assert batch["audio"].shape == (2, FRAMES, 128)
    # CLIP's tokenizer repairs the release's mojibake (ftfy).
    repaired = "Oh my God, I\u2019m so happy!"
    assert torch.equal(batch["text"][0], tokenize([repaired], 16)[0])


# ---------------------------------------------------------------- errors


def test_unset_or_missing_data_dir_is_one_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="data-dir") as err:
        dataset_info(RunConfig(dataset="coco-qa").data)
    assert "questions.txt" in str(err.value)  # the expected layout is shown
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        dataset_info(cfg_for("meld", tmp_path / "nowhere").data)
    assert issubclass(DatasetError, ValueError)


@pytest.mark.parametrize(
    ("name", "maker", "remove"),
    [
        ("coco-qa", make_cocoqa, "test/types.txt"),
        ("coco-qa", make_cocoqa, "val2014"),
        ("b-t4sa", make_t4sa, "raw_tweets_text.csv"),
        ("flickr30k", lambda r: make_karpathy(r, flickr=True), "dataset_flickr30k.json"),
        ("ucf101", make_ucf101, "ucfTrainTestlist/classInd.txt"),
        ("kinetics-sounds", make_kinetics, "val"),
        ("meld", make_meld, "test_sent_emo.csv"),
    ],
)
def test_missing_file_or_folder_names_the_path(tmp_path, name, maker, remove):
    import shutil

    root = maker(tmp_path)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        dataset_info(cfg_for(name, root).data)
    assert str(target) in str(err.value) and "expects this layout" in str(err.value)


def test_malformed_index_files_are_reported(tmp_path):
    root = make_cocoqa(tmp_path / "qa")
    write_lines(root / "train" / "answers.txt", ["cat", "two"])
    with pytest.raises(DatasetFormatError, match="one line per question"):
        dataset_info(cfg_for("coco-qa", root).data)

    root = make_karpathy(tmp_path / "coco")
    (root / "dataset_coco.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        dataset_info(cfg_for("mscoco", root).data)

    root = make_meld(tmp_path / "meld")
    write_csv(root / "train_sent_emo.csv", ["Utterance", "Dialogue_ID"], [["hi", 0]])
    with pytest.raises(DatasetFormatError, match="Emotion"):
        dataset_info(cfg_for("meld", root).data)

    root = make_t4sa(tmp_path / "t4sa")
    write_lines(root / "b-t4sa_test.txt", ["data/3/333-1.jpg positive"])
    with pytest.raises(DatasetFormatError, match=r"b-t4sa_test\.txt"):
        dataset_info(cfg_for("b-t4sa", root).data)


def test_bad_media_is_reported_by_file_name_at_decode_time(tmp_path):
    root = make_cocoqa(tmp_path)
    bad = root / "train2014" / "COCO_train2014_000000000025.jpg"
    bad.write_bytes(b"not a jpeg")
    train = load_split(cfg_for("coco-qa", root).data, "train")
    with pytest.raises(DatasetFormatError, match="COCO_train2014_000000000025"):
        train.batch([2])
    bad.unlink()
    with pytest.raises(DatasetNotFoundError, match="COCO_train2014_000000000025"):
        loaders.load(cfg_for("coco-qa", root).data, "train").batch([2])


# ---------------------------------------------------------------- partition plot, config


def test_partition_plot_writes_png_of_the_client_partitions(tmp_path):
    out = tmp_path / "plot.png"
    plot_main(
        [
            "--run-config",
            "dataset='synthetic-vqa' synthetic-train-size=400 dirichlet-alpha=0.3",
            "--num-partitions",
            "4",
            "--out",
            str(out),
        ]
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = RunConfig(dataset="synthetic-vqa", synthetic_train_size=400, dirichlet_alpha=0.3)
    plotted = partitioner(cfg.data, 4, seed=cfg.seed)
    for c in range(4):
        rows = np.asarray(plotted.load_partition(c)["idx"])
        assert np.array_equal(rows, client_partition(cfg.data, c, 4, seed=cfg.seed))


def test_pyproject_config_matches_defaults():
    assert load_pyproject_config() == RunConfig().to_mapping()


# ---------------------------------------------------------------- dataset files (issue 15)


def append_raw(path: Path, text: str) -> None:
    """Append ``text`` as is (a cut-off row has no closing newline)."""
    with path.open("a", encoding="utf-8", newline="") as fh:
        fh.write(text)


def test_truncated_kinetics_row_names_file_and_line(tmp_path):
    root = make_kinetics(tmp_path)
    append_raw(root / "annotations" / "validate.csv", "singing,v2,0")  # cut after time_start
    with pytest.raises(DatasetFormatError, match=r"validate\.csv, line 3: .*time_end"):
        dataset_info(cfg_for("kinetics-sounds", root).data)


def test_truncated_meld_row_names_file_and_line(tmp_path):
    root = make_meld(tmp_path)
    append_raw(root / "test_sent_emo.csv", "2,Cut off here")
    with pytest.raises(DatasetFormatError, match=r"test_sent_emo\.csv, line 3: .*Emotion"):
        dataset_info(cfg_for("meld", root).data)


def test_truncated_ucf101_list_line_is_reported_at_open(tmp_path, caplog):
    root = make_ucf101(tmp_path)
    lists = root / "ucfTrainTestlist"
    write_lines(
        lists / "testlist01.txt",
        [
            "Archery/v_Archery_g03_c0",
            *lists.joinpath("testlist01.txt").read_text().splitlines()[1:],
        ],
    )
    cfg = cfg_for("ucf101", root)
    assert cfg.missing_files == "skip"  # the default: public copies lack some clips
    test = load_split(cfg.data, "test")
    assert test.labels.tolist() == [1]  # the cut line's video is left out at open
    assert "1 of 2 test videos" in caplog.text
    assert "testlist01.txt line 1" in caplog.text and "v_Archery_g03_c0" in caplog.text
    with pytest.raises(DatasetNotFoundError, match=r"testlist01\.txt line 1.*missing-files"):
        dataset_info(cfg_for("ucf101", root, missing_files="fail").data)


def test_missing_files_fail_applies_to_clips_found_by_name(tmp_path):
    root = make_kinetics(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"1 of 4 train clips.*train\.csv line 6"):
        dataset_info(cfg_for("kinetics-sounds", root, missing_files="fail").data)


def test_missing_files_key_takes_fail_or_skip():
    from mpsl_flwr.config import ConfigError

    assert RunConfig.from_mapping({"missing-files": "fail"}).data.missing_files == "fail"
    with pytest.raises(ConfigError, match="missing-files"):
        RunConfig.from_mapping({"missing-files": "ignore"})


def test_missing_retrieval_image_is_left_out_and_pair_ids_renumbered(tmp_path, caplog):
    root = make_karpathy(tmp_path)  # test images 3 and 4
    (root / "val2014" / "COCO_val2014_000000000003.jpg").unlink()
    test = load_split(cfg_for("mscoco", root).data, "test")
    assert test.labels.tolist() == [0] * 5 and len(test.table.media) == 1
    assert "dataset_coco.json image 3" in caplog.text


def test_symlinked_class_folders_are_followed_without_looping(tmp_path):
    root = make_kinetics(tmp_path / "k")
    elsewhere = tmp_path / "disk2" / "singing"
    elsewhere.parent.mkdir(parents=True)
    (root / "train" / "singing").rename(elsewhere)
    (root / "train" / "singing").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "back").symlink_to(root / "train", target_is_directory=True)  # a loop
    train = load_split(cfg_for("kinetics-sounds", root).data, "train")
    assert KINETICS_SOUNDS.index("singing") in train.labels.tolist()


def test_meld_keeps_u0085_as_an_ellipsis(tmp_path):
    root = make_meld(tmp_path)
    rows = [meld_row(1, "Hi.", "joy", 0, 0), meld_row(2, "Well\x85 I  guess\x85", "neutral", 0, 1)]
    write_csv(root / "train_sent_emo.csv", MELD_HEADER, rows)
    train = load_split(cfg_for("meld", root).data, "train")
    assert train.table.texts == ("Hi.", "Well... I guess...")


def test_class_cut_to_a_few_samples_is_warned_about(tmp_path, caplog):
    root = make_cocoqa(tmp_path)
    answers = ["cat"] * 40 + ["two"] * 40 + ["c"]  # "cat" cut to one letter
    for name, values in {
        "questions": ["what is it ?"] * len(answers),
        "answers": answers,
        "img_ids": [9] * len(answers),
        "types": [0] * len(answers),
    }.items():
        write_lines(root / "train" / f"{name}.txt", values)
    dataset_info(cfg_for("coco-qa", root).data)
    assert "'c' (1 train samples)" in caplog.text


def test_kinetics_row_cut_inside_its_label_is_warned_about(tmp_path, caplog):
    root = make_kinetics(tmp_path)
    rows = [["playing drums", "abc", 10, 20, "train"], ["playing dr", "abd", 0, 10, "train"]]
    write_csv(root / "annotations" / "train.csv", KINETICS_HEADER, rows)
    dataset_info(cfg_for("kinetics-sounds", root).data)
    assert "train.csv line 3" in caplog.text and "'playing dr'" in caplog.text


def test_t4sa_tweet_cut_inside_its_quotes_is_warned_about(tmp_path, caplog):
    root = make_t4sa(tmp_path)
    append_raw(root / "raw_tweets_text.csv", '444,"sad ne')
    dataset_info(cfg_for("b-t4sa", root).data)
    assert "raw_tweets_text.csv line 7" in caplog.text and "quote" in caplog.text


def test_classes_without_samples_are_warned_about(tmp_path, caplog):
    root = make_kinetics(tmp_path)  # 2 of the 31 classes have train clips, 1 has test clips
    dataset_info(cfg_for("kinetics-sounds", root).data)
    assert "29 class(es) have no train samples: 'blowing nose'" in caplog.text
    assert "30 class(es) have no test samples" in caplog.text


def test_a_row_is_named_by_the_line_it_starts_on(tmp_path):
    root = make_meld(tmp_path)
    append_raw(root / "test_sent_emo.csv", '2,"Two\nlines"')  # cut, and spans lines 3-4
    with pytest.raises(DatasetFormatError, match=r"test_sent_emo\.csv, line 3: "):
        dataset_info(cfg_for("meld", root).data)


def test_meld_label_ids_are_the_releases():
    """declare-lab/MELD's README: {'neutral': 0, 'surprise': 1, 'fear': 2, 'sadness': 3,
    'joy': 4, 'disgust': 5, 'anger': 6}; Kinetics-400's classes list is alphabetical."""
    from mpsl_flwr.data.loaders.meld import EMOTIONS

    official = {"neutral": 0, "surprise": 1, "fear": 2, "sadness": 3, "joy": 4, "disgust": 5}
    assert {name: i for i, name in enumerate(EMOTIONS)} == {**official, "anger": 6}
    assert list(KINETICS_SOUNDS) == sorted(KINETICS_SOUNDS)  # Kinetics-400's own order
